"""Sweep definitions: a base config plus axes, expanded into a list of resolved configs.

A sweep file (``experiments/sweeps/NAME.py``) defines ``get_sweep()`` returning a :class:`Sweep` (or a
list of them, concatenated in order)::

    Sweep(base, [cases([{'method': 'one_shot'}, {'method': 'gradual_magnitude'}]),
                 product({'sparsity': [0.5, 0.9]}),
                 product({'seed': [0, 1]})])

Each axis term yields a list of assignments (``{dotted key: value}``); the terms are combined as a
cartesian product, the first term varying slowest (like nested ``for`` loops, and
``itertools.product``). Within :func:`product` the first key varies slowest too; :func:`zip_` walks
its lists in parallel; :func:`cases` lists assignments explicitly (rows may set different keys).
Keys are checked against the base config (unknown keys raise :class:`~jaxprune.errors.ConfigError`
naming the key) and values are type-checked like ``key=value`` overrides.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from typing import Any, Iterable, Mapping, Sequence

import ml_collections

from jaxprune.config import apply_overrides, call_user, coerce_value, import_file
from jaxprune.errors import ConfigError

__all__ = ["Axis", "Sweep", "product", "zip_", "cases", "expand", "expand_all", "load_sweep",
           "config_dict", "run_key", "KEY_EXCLUDED", "KEY_OMITTED_AT_DEFAULT"]

KEY_EXCLUDED = ("progress", "dense_cache_dir")
"""Config fields that do not change a run's result and are left out of its key (and its record): a
run restored from the dense cache is bit for bit the run that trained its own."""

KEY_OMITTED_AT_DEFAULT = {"latency_fast": False}
"""Config fields added after sweeps had been run, left out of a run's key while they hold this value
(they are still in its record): keys recorded before the field existed stay valid, so an existing
sweep directory resumes instead of running everything again, and a run that sets the field to
anything else gets a key of its own."""


@dataclasses.dataclass(frozen=True)
class Axis:
    """One axis term: an ordered tuple of assignments ``{dotted key: value}``."""

    kind: str
    rows: tuple[Mapping[str, Any], ...]

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys this term sets, in first-seen order."""
        return tuple(dict.fromkeys(k for row in self.rows for k in row))


def _values(key: Any, values: Any, where: str) -> list:
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{where}: keys must be non-empty strings (dotted config fields), got {key!r}")
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise ConfigError(f"{where}: values of {key!r} must be a list, got {values!r}")
    values = list(values)
    if not values:
        raise ConfigError(f"{where}: values of {key!r} are empty (the sweep would have no runs)")
    return values


def product(axes: Mapping[str, Sequence[Any]]) -> Axis:
    """Every combination of the values; the first key varies slowest.

    >>> [dict(r) for r in product({'a': [1, 2], 'b': ['x', 'y']}).rows]
    [{'a': 1, 'b': 'x'}, {'a': 1, 'b': 'y'}, {'a': 2, 'b': 'x'}, {'a': 2, 'b': 'y'}]
    """
    if not isinstance(axes, Mapping) or not axes:
        raise ConfigError(f"product: expects a non-empty dict {{key: [values]}}, got {axes!r}")
    lists = {k: _values(k, v, "product") for k, v in axes.items()}
    rows = tuple(dict(zip(lists, combo)) for combo in itertools.product(*lists.values()))
    return Axis("product", rows)


def zip_(axes: Mapping[str, Sequence[Any]]) -> Axis:
    """The i-th values of every key together; all lists must have one length.

    >>> [dict(r) for r in zip_({'method': ['none', 'one_shot'], 'sparsity': [0.0, 0.9]}).rows]
    [{'method': 'none', 'sparsity': 0.0}, {'method': 'one_shot', 'sparsity': 0.9}]
    """
    if not isinstance(axes, Mapping) or not axes:
        raise ConfigError(f"zip_: expects a non-empty dict {{key: [values]}}, got {axes!r}")
    lists = {k: _values(k, v, "zip_") for k, v in axes.items()}
    lengths = {k: len(v) for k, v in lists.items()}
    if len(set(lengths.values())) > 1:
        raise ConfigError(f"zip_: lists must have equal lengths, got {lengths}")
    rows = tuple(dict(zip(lists, combo)) for combo in zip(*lists.values()))
    return Axis("zip", rows)


def cases(rows: Sequence[Mapping[str, Any]]) -> Axis:
    """Explicit assignments, one per case (each may set different keys).

    >>> cases([{'method': 'one_shot', 'scorer': 'random'}, {'method': 'gradual_magnitude'}]).keys
    ('method', 'scorer')
    """
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Iterable):
        raise ConfigError(f"cases: expects a list of dicts, got {rows!r}")
    rows = list(rows)
    if not rows:
        raise ConfigError("cases: the list of cases is empty (the sweep would have no runs)")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ConfigError(f"cases: case {i} must be a dict {{key: value}}, got {row!r}")
        for key in row:
            if not isinstance(key, str) or not key:
                raise ConfigError(f"cases: case {i} has a key that is not a non-empty string: {key!r}")
    return Axis("cases", tuple(dict(r) for r in rows))


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A base config and the axis terms that vary it (combined as a product, first term slowest).

    >>> base = ml_collections.ConfigDict({'method': 'none', 'sparsity': 0.0, 'seed': 0})
    >>> s = Sweep(base, [product({'sparsity': [0.5, 0.9]}), product({'seed': [0, 1]})])
    >>> [(c.sparsity, c.seed) for c in expand(s)]
    [(0.5, 0), (0.5, 1), (0.9, 0), (0.9, 1)]
    """

    base: ml_collections.ConfigDict
    axes: Sequence[Axis] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.base, ml_collections.ConfigDict):
            raise ConfigError(f"Sweep: base must be an ml_collections ConfigDict, got "
                              f"{type(self.base).__name__}")
        axes = tuple(self.axes)
        seen: dict[str, int] = {}
        for i, axis in enumerate(axes):
            if not isinstance(axis, Axis):
                raise ConfigError(f"Sweep: axes[{i}] must be product(...), zip_(...) or cases(...), "
                                  f"got {axis!r}")
            for key in axis.keys:
                if key in seen:
                    raise ConfigError(f"Sweep: key {key!r} is set by axes[{seen[key]}] and axes[{i}]; "
                                      f"put it in one term (zip_ or cases for joint values)")
                seen[key] = i
        object.__setattr__(self, "axes", axes)

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key the axes set."""
        return tuple(k for axis in self.axes for k in axis.keys)


def _set_field(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    node, parts = config, key.split(".")
    for depth, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise ConfigError(f"sweep axis key {key!r} is unknown: {'.'.join(parts[:depth + 1])!r} "
                              f"is not a config group")
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError(f"sweep axis key {key!r} is unknown; known keys: {', '.join(sorted(node))}")
    old = node[parts[-1]]
    new = coerce_value(key, old, value)
    with node.ignore_type():
        node[parts[-1]] = new


def expand(sweep: Sweep, overrides: Iterable[str] = ()) -> list[ml_collections.ConfigDict]:
    """The sweep's configs in order: ``key=value`` ``overrides`` on the base first, then the axes.

    An override may not set a key that an axis varies (the axis would silently win).

    >>> base = ml_collections.ConfigDict({'method': 'none', 'sparsity': 0.0, 'seed': 0})
    >>> [c.method for c in expand(Sweep(base, [cases([{'method': 'one_shot'}])]), ['seed=3'])]
    ['one_shot']
    """
    if not isinstance(sweep, Sweep):
        raise ConfigError(f"expand: expects a Sweep, got {type(sweep).__name__}")
    overrides = list(overrides)
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in sweep.keys:
            raise ConfigError(f"override {item!r} sets {key!r}, which an axis of this sweep varies; "
                              f"change the sweep file instead")
    base = apply_overrides(sweep.base, overrides)  # a resolved copy (FieldReferences become values)
    out = []
    for combo in itertools.product(*(axis.rows for axis in sweep.axes)):
        config = ml_collections.ConfigDict(base.to_dict())
        for row in combo:
            for key, value in row.items():
                _set_field(config, key, value)
        out.append(config)
    return out


def expand_all(sweeps: Sweep | Sequence[Sweep], overrides: Iterable[str] = ()
               ) -> list[ml_collections.ConfigDict]:
    """:func:`expand` of each sweep, concatenated; a config equal to an earlier one (same
    :func:`run_key`) is dropped.

    >>> base = ml_collections.ConfigDict({'method': 'none', 'seed': 0})
    >>> len(expand_all([Sweep(base, [product({'seed': [0, 1]})]), Sweep(base, [product({'seed': [1, 2]})])]))
    3
    """
    if isinstance(sweeps, Sweep):
        sweeps = [sweeps]
    if isinstance(sweeps, (str, bytes)) or not isinstance(sweeps, Sequence) or not sweeps:
        raise ConfigError(f"a sweep must be a Sweep or a non-empty list of Sweeps, got {sweeps!r}")
    overrides = list(overrides)
    out, seen = [], set()
    for sweep in sweeps:
        for config in expand(sweep, overrides):
            key = run_key(config)
            if key not in seen:
                seen.add(key)
                out.append(config)
    return out


def load_sweep(path: str | os.PathLike) -> list[Sweep]:
    """Imports the sweep file ``path`` and returns its ``get_sweep()`` as a list of sweeps.

    >>> [len(expand(s)) for s in load_sweep('experiments/sweeps/demo.py')]  # doctest: +SKIP
    [2, 24]
    """
    path = os.fspath(path)
    module = import_file(path, "sweep")
    if not hasattr(module, "get_sweep"):
        if hasattr(module, "get_config"):
            raise ConfigError(f"{path!r} is a config file (it has get_config()): run it with `jaxprune run`")
        raise ConfigError(f"sweep file {path!r} has no get_sweep()")
    sweeps = call_user(module.get_sweep, f"sweep file {path!r}: get_sweep()")
    sweeps = [sweeps] if isinstance(sweeps, Sweep) else sweeps
    if not isinstance(sweeps, (list, tuple)) or not sweeps or \
            not all(isinstance(s, Sweep) for s in sweeps):
        raise ConfigError(f"sweep file {path!r}: get_sweep() must return a Sweep or a list of Sweeps")
    return list(sweeps)


def config_dict(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict:
    """The plain dict of ``config`` without :data:`KEY_EXCLUDED` fields (what a run's key hashes).

    >>> config_dict(ml_collections.ConfigDict({'seed': 1, 'progress': False}))
    {'seed': 1}
    """
    d = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    return {k: v for k, v in d.items() if k not in KEY_EXCLUDED}


def _canonical(d: dict) -> str:
    try:
        return json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=True)
    except TypeError as err:
        bad = [k for k, v in d.items() if not _jsonable(v)]
        raise ConfigError(f"config field {bad[0] if bad else '?'!r} is not JSON-serialisable: {err}") \
            from err


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


def run_key(config: ml_collections.ConfigDict | Mapping[str, Any]) -> str:
    """A stable 12-hex-digit id: sha256 of the canonical JSON of :func:`config_dict`.

    >>> a = ml_collections.ConfigDict({'seed': 0, 'sparsity': 0.5, 'progress': True})
    >>> run_key(a) == run_key({'sparsity': 0.5, 'seed': 0}), len(run_key(a))
    (True, 12)
    >>> off, on = run_key({'seed': 0, 'latency_fast': False}), run_key({'seed': 0, 'latency_fast': True})
    >>> off == run_key({'seed': 0}) != on
    True
    """
    d = {k: v for k, v in config_dict(config).items()
         if not (k in KEY_OMITTED_AT_DEFAULT and v == KEY_OMITTED_AT_DEFAULT[k])}
    return hashlib.sha256(_canonical(d).encode()).hexdigest()[:12]
