"""Experiment configs: ``get_config()`` files, ``key=value`` overrides, validation.

A config file is plain Python with ``get_config()`` returning an ``ml_collections.ConfigDict``
(flax-examples style). Overrides set dotted fields; the value is parsed as a Python literal and must
match the field's type (an int where a float is expected is fine). Unknown keys and ill-typed values
raise :class:`~jaxprune.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
from typing import Any, Iterable, Mapping

import ml_collections

from jaxprune.errors import ConfigError

__all__ = ["load_config", "import_file", "call_user", "apply_overrides", "parse_value", "coerce_value",
           "field_or_default"]


def load_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """Imports ``path`` and returns its ``get_config()``.

    >>> cfg = load_config('experiments/configs/seed_mlp.py')  # doctest: +SKIP
    """
    module = import_file(path, "config")
    if hasattr(module, "get_sweep"):
        raise ConfigError(f"{path!r} is a sweep file (it has get_sweep()): run it with `jaxprune sweep`")
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} has no get_config()")
    config = call_user(module.get_config, f"config file {path!r}: get_config()")
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict")
    return config


def import_file(path: str | os.PathLike, what: str) -> Any:
    """Imports the Python file ``path`` (a config or sweep file) as a fresh module.

    A variant imports its base by path (``load_config(Path(__file__).with_name('seed_mlp.py'))``),
    never through ``sys.path``. Any failure, including ``sys.exit()`` at import, is a
    :class:`ConfigError` naming the file.

    >>> import_file('nope.py', 'config')
    Traceback (most recent call last):
    ...
    jaxprune.errors.ConfigError: config file 'nope.py' does not exist
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"{what} file {path!r} does not exist")
    name = f"_jaxprune_{what}_" + hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ConfigError as err:
        raise ConfigError(f"{what} file {path!r}: {err}") from err
    except BaseException as err:  # a broken user file (sys.exit included): a config error
        if isinstance(err, KeyboardInterrupt):
            raise
        raise ConfigError(f"{what} file {path!r} failed to import: {type(err).__name__}: {err}") from err
    return module


def call_user(fn: Any, where: str) -> Any:
    """``fn()`` with any failure of the user's code (sys.exit included) as a :class:`ConfigError`.

    >>> call_user(lambda: 1 / 0, 'get_config()')
    Traceback (most recent call last):
    ...
    jaxprune.errors.ConfigError: get_config() failed: ZeroDivisionError: division by zero
    """
    try:
        return fn()
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err
    except BaseException as err:  # noqa: BLE001 -- the user's code: report, don't crash
        if isinstance(err, KeyboardInterrupt):
            raise
        raise ConfigError(f"{where} failed: {type(err).__name__}: {err}") from err


def parse_value(text: str) -> Any:
    """A Python literal if ``text`` is one, else the string itself.

    >>> parse_value('0.5'), parse_value('true'), parse_value('erk'), parse_value('None')
    (0.5, True, 'erk', None)
    """
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def coerce_value(key: str, old: Any, new: Any) -> Any:
    """``new`` as the type of the field's current value ``old`` (an int is fine for a float field).

    >>> coerce_value('lr', 0.1, 1), coerce_value('name', 'a', 3)
    (1.0, '3')
    """
    if old is None or new is None:
        return new
    if isinstance(old, bool):
        if isinstance(new, bool):
            return new
    elif isinstance(old, int):
        if isinstance(new, int) and not isinstance(new, bool):
            return new
    elif isinstance(old, float):
        if isinstance(new, (int, float)) and not isinstance(new, bool):
            return float(new)
    elif isinstance(old, str):
        return new if isinstance(new, str) else str(new)
    elif isinstance(old, (tuple, list)):
        if isinstance(new, (tuple, list)):
            return type(old)(new)
    else:
        return new
    raise ConfigError(f"config field {key!r} expects {type(old).__name__}, got {new!r}")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
    """Returns a copy of ``config`` with ``key=value`` overrides applied (dotted keys allowed).

    >>> c = ml_collections.ConfigDict({'a': 1, 'b': {'c': 0.5}})
    >>> apply_overrides(c, ['a=3', 'b.c=1']).b.c
    1.0
    """
    config = ml_collections.ConfigDict(config.to_dict())
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        node, parts = config, key.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise ConfigError(f"unknown config key {key!r}")
            node = node[part]
        if parts[-1] not in node:
            known = ", ".join(sorted(node.keys()))
            raise ConfigError(f"unknown config key {key!r}; known keys: {known}")
        old = node[parts[-1]]
        # A string field takes the text as written ('none' is a method name, not None).
        value = text if isinstance(old, str) else coerce_value(key, old, parse_value(text))
        with node.ignore_type():
            node[parts[-1]] = value
    return config


def field_or_default(config: Any, name: str, defaults: Mapping[str, Any], *,
                     none_allowed: Iterable[str] = ()) -> Any:
    """``config[name]`` from a ConfigDict, dict or object, falling back to ``defaults[name]``.

    A ``None`` value also falls back, except for fields in ``none_allowed`` (where None means something,
    e.g. ``max_depth=None`` = unlimited).

    >>> field_or_default({'a': None}, 'a', {'a': 3}), field_or_default({}, 'b', {'b': 1})
    (3, 1)
    """
    if isinstance(config, Mapping) or hasattr(config, "get"):
        value = config.get(name, defaults[name])
    else:
        value = getattr(config, name, defaults[name])
    return defaults[name] if value is None and name not in none_allowed else value
