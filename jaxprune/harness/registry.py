"""The registry of training-time methods: ``name -> fn(run) -> MethodOutput``.

The harness never imports a method; :mod:`jaxprune.methods` registers its methods on import, and a
user's own method is one function plus :func:`register_method` (docs/methods.md).
"""

from __future__ import annotations

from typing import Any, Callable

from jaxprune.errors import ConfigError

__all__ = ["MethodFn", "METHODS", "register_method", "get_method"]

MethodFn = Callable[[Any], Any]
METHODS: dict[str, MethodFn] = {}


def register_method(name: str, *, replace: bool = False) -> Callable[[MethodFn], MethodFn]:
    """Decorator adding ``fn(run) -> MethodOutput`` as ``method=name``.

    Registering a taken name is an error unless ``replace=True`` (a silent overwrite would change
    what existing configs run).

    >>> @register_method("doc_example", replace=True)
    ... def doc_example(run):
    ...     'Does nothing (an example).'
    >>> get_method("doc_example") is doc_example
    True
    >>> del METHODS["doc_example"]  # (the example leaves the registry as it was)
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"register_method: name must be a non-empty string, got {name!r}")

    def add(fn: MethodFn) -> MethodFn:
        if name in METHODS and METHODS[name] is not fn and not replace:
            raise ConfigError(f"register_method: method {name!r} is already registered "
                              "(pass replace=True to replace it)")
        METHODS[name] = fn
        return fn

    return add


def get_method(name: str) -> MethodFn:
    """The method registered as ``name`` (a :class:`~jaxprune.errors.ConfigError` naming the known ones).

    >>> get_method("no such method")
    Traceback (most recent call last):
    ...
    jaxprune.errors.ConfigError: method='no such method' is unknown; known: [...]
    """
    if name not in METHODS:
        raise ConfigError(f"method={name!r} is unknown; known: {sorted(METHODS)}")
    return METHODS[name]
