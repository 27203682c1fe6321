"""Record chosen layers' inputs or outputs from an *unmodified* flax model, chosen by module path.

linen: ``nn.intercept_methods`` sees every submodule's ``__call__``; a chosen one sows its input or
output into a private collection (``'jaxprune_taps'``) that is mutable only during the capture, so
lifted transforms (``nn.scan``, ``nn.remat``) carry it as flax carries ``capture_intermediates``.
nnx: each chosen submodule gets, for the call only, a subclass whose ``__call__`` sows the value as an
``nnx.Intermediate`` under ``nnx.capture``; its own class is restored in a ``finally`` (the model is
left exactly as it was; only that instance is touched, never its class).

A *tap* names a module path and a point: ``'fc1'`` (its output), ``'head:input'`` (its input: the
post-activation value of the layer before, when only an activation function lies between them).
"""

from __future__ import annotations

import fnmatch
import functools
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from jaxprune.errors import PruningError

_COLLECTION = "jaxprune_taps"
_NAMES = {"input": "jaxprune_in", "output": "jaxprune_out"}
_POINTS = tuple(_NAMES)


class Tap(NamedTuple):
    """One capture request: a glob (or predicate) on the module path, the point, the result key."""

    pattern: Any  # glob string on the '/'-joined module path, or a predicate (path) -> bool
    point: str  # 'output' or 'input'
    key: str | None  # result key; None: the captured module's own path


def parse_taps(layers: Any) -> tuple[Tap, ...]:
    """Turn a ``layers=`` argument into taps (hashable, so jitted steps can cache on it).

    ``'glob'`` / ``'glob:input'``, a predicate ``(path) -> bool``, a list of these, or a mapping
    ``{key: 'path' | 'path:input' | 'path:output'}`` (each value must match exactly one module).

    Example:
        >>> parse_taps({'fc1': 'head:input'})
        (Tap(pattern='head', point='input', key='fc1'),)
        >>> [t.pattern for t in parse_taps(['*/conv_a', 'fc1'])]
        ['*/conv_a', 'fc1']
    """
    if isinstance(layers, Mapping):
        if not layers:
            raise PruningError("layers: an empty mapping captures nothing")
        taps = []
        for key, spec in layers.items():
            if not isinstance(spec, str):
                raise PruningError(f"layers[{key!r}]: expected 'path', 'path:input' or 'path:output', "
                                   f"got {spec!r}")
            taps.append(_parse_one(spec)._replace(key=str(key)))
        return tuple(taps)
    if isinstance(layers, (str,)) or callable(layers):
        layers = [layers]
    if not isinstance(layers, (list, tuple)) or not layers:
        raise PruningError("layers: expected a glob string, a predicate (path) -> bool, a list of them "
                           f"or a mapping key -> 'path[:input|:output]', got {layers!r}")
    return tuple(_parse_one(s) for s in layers)


def _parse_one(spec: Any) -> Tap:
    if callable(spec) and not isinstance(spec, str):
        return Tap(spec, "output", None)
    if not isinstance(spec, str) or not spec:
        raise PruningError(f"layers: expected a non-empty glob string or a predicate, got {spec!r}")
    head, sep, tail = spec.rpartition(":")
    if sep and tail in _POINTS and head:
        return Tap(head, tail, None)
    return Tap(spec, "output", None)


def _matches(tap: Tap, path: str) -> bool:
    if callable(tap.pattern):
        return bool(tap.pattern(path))
    return fnmatch.fnmatchcase(path, tap.pattern)


def record(model: Any, variables: Any, x: jax.Array, taps: tuple[Tap, ...],
           kwargs: Mapping) -> tuple[Any, dict[str, dict[str, jax.Array]], list[str]]:
    """Run the model once recording the taps' points.

    Returns ``(output, {module_path: {point: value}}, called_paths)``; a module called several
    times has its values concatenated along the batch axis.
    """
    def wanted(path: str) -> frozenset:
        return frozenset(t.point for t in taps if _matches(t, path))

    if isinstance(model, nnx.Module):
        y, sown, called = _record_nnx(model, x, wanted, kwargs)
    elif isinstance(model, nn.Module):
        y, sown, called = _record_linen(model, variables, x, wanted, kwargs)
    else:
        raise PruningError(f"capture: expected a flax.linen or flax.nnx Module, got {type(model).__name__}")
    return y, _by_path(sown), called


def _record_linen(model, variables, x, wanted, kwargs):
    if variables is None:
        raise PruningError("capture_activations: a linen model needs its variables, got None")
    if isinstance(variables, Mapping) and "params" not in variables:
        variables = {"params": variables}
    called: list[str] = []

    def interceptor(next_fun, args, kw, ctx):
        out = next_fun(*args, **kw)
        mod = ctx.module
        if ctx.method_name != "__call__" or not mod.path:
            return out
        path = "/".join(mod.path)
        called.append(path)  # a string, not a traced value: safe to keep outside the trace
        for point in wanted(path):
            mod.sow(_COLLECTION, _NAMES[point], _value(path, point, args, out))
        return out

    with nn.intercept_methods(interceptor):
        y, state = model.apply(variables, x, mutable=[_COLLECTION], **dict(kwargs))
    return y, state.get(_COLLECTION, {}), called


def _value(path: str, point: str, args: tuple, out: Any) -> jax.Array:
    value = out if point == "output" else (args[0] if args else None)
    if not isinstance(value, jax.Array):
        raise PruningError(f"capture: the {point} of module {path!r} is {type(value).__name__}, not an "
                           f"array; choose a layer whose {point} is one array")
    return value


def _record_nnx(model, x, wanted, kwargs):
    chosen, seen = [], set()
    for parts, module in nnx.iter_modules(model):
        path = "/".join(str(p) for p in parts)
        points = wanted(path) if path else frozenset()
        if points and id(module) not in seen:
            seen.add(id(module))
            chosen.append((module, type(module), points))
    called: list[str] = []
    try:
        for module, cls, points in chosen:
            # Python looks __call__ up on the type, so an instance attribute cannot intercept it.
            object.__setattr__(module, "__class__", _recording_class(cls, points))
        y, inter = nnx.capture(model, nnx.Intermediate)(x, **dict(kwargs))
    finally:
        for module, cls, _ in chosen:
            object.__setattr__(module, "__class__", cls)
    sown = nnx.to_pure_dict(inter)
    return y, sown, called


@functools.lru_cache(maxsize=None)
def _recording_class(cls: type, points: frozenset) -> type:
    def __call__(self, *args, **kw):
        out = cls.__call__(self, *args, **kw)
        if hasattr(self, "__captures__"):  # only inside nnx.capture: never grows the model's state
            for point in sorted(points):
                self.sow(nnx.Intermediate, _NAMES[point], _value(cls.__name__, point, args, out))
        return out

    return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})


def _by_path(sown: Mapping) -> dict[str, dict[str, jax.Array]]:
    """{'block': {'conv_a': {'jaxprune_out': (x,)}}} -> {'block/conv_a': {'output': x}}."""
    names = {v: k for k, v in _NAMES.items()}
    out: dict[str, dict[str, jax.Array]] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        for key, child in node.items():
            if key in names and isinstance(child, (tuple, list)):
                # A layer applied several times (weight sharing) contributes each call's examples.
                # One call keeps the very object, so kernel_layers can tell the model's output by identity.
                value = child[0] if len(child) == 1 else jnp.concatenate(
                    [jnp.asarray(c) for c in child], axis=0)
                out.setdefault("/".join(path), {})[names[key]] = value
            elif isinstance(child, Mapping):
                walk(child, (*path, str(key)))

    walk(sown, ())
    return out


def select(taps: tuple[Tap, ...], recorded: Mapping[str, Mapping[str, jax.Array]],
           modules: list[str]) -> dict[str, jax.Array]:
    """The values the taps ask for, keyed by the tap's key (or module path); errors name the tap."""
    out: dict[str, jax.Array] = {}
    for tap in taps:
        hits = sorted(p for p in recorded if tap.point in recorded[p] and _matches(tap, p))
        if not hits:
            raise PruningError(f"layers: {_show(tap)} matches no called module; module paths are "
                               f"{sorted(set(modules))}")
        if tap.key is not None and len(hits) != 1:
            raise PruningError(f"layers[{tap.key!r}]: {_show(tap)} must match one module, matches {hits}")
        for path in hits:
            key = tap.key if tap.key is not None else path
            if key in out:
                raise PruningError(f"layers: two taps give the result key {key!r}; name them with a "
                                   f"mapping {{key: 'path[:input]'}}")
            out[key] = recorded[path][tap.point]
    return out


def _show(tap: Tap) -> str:
    pattern = getattr(tap.pattern, "__name__", "predicate") if callable(tap.pattern) else tap.pattern
    return f"{pattern!r} ({tap.point})"


def kernel_layers(model: Any, variables: Any, x: jax.Array, kwargs: Mapping) -> tuple[str, ...]:
    """Modules that own a ``kernel`` param (Dense, Conv, Linear, attention projections...) whose
    output is not the model's output: the hidden layers of an unmodified model.

    The output layer is the one whose output *is* the model's output (or, if the model transforms
    it, e.g. a softmax, the only kernel layer whose output has the model output's shape); when
    neither finds exactly one, :class:`PruningError` asks for the layers to be named.
    """
    owners = _kernel_owners(model, variables)
    taps = tuple(Tap(p, "output", None) for p in owners)
    kept: list[str] = []

    def fn(m, v, a):
        y, recorded, called = record(m, v, a, taps, kwargs)
        leaves = jax.tree.leaves(y)
        outs = {p: r["output"] for p, r in recorded.items() if "output" in r}
        final = [p for p, val in outs.items() if any(val is leaf for leaf in leaves)]
        if len(final) != 1:
            final = [p for p, val in outs.items() if any(val.shape == leaf.shape for leaf in leaves)]
        if len(final) != 1:
            raise PruningError(
                f"hidden_layers: cannot tell which layer produces the model output (candidates "
                f"{final or sorted(outs)}); pass layers=... naming the hidden layers")
        order = [p for p in dict.fromkeys(called or owners) if p in outs]
        kept.extend(p for p in order if p != final[0])
        return 0

    if isinstance(model, nnx.Module):
        graphdef, state = nnx.split(model)  # trace a copy: the caller's model is not touched
        jax.eval_shape(lambda s, a: fn(nnx.merge(graphdef, s), None, a), state, x)
    else:
        jax.eval_shape(lambda v, a: fn(model, v, a), variables, x)
    return tuple(kept)


def _kernel_owners(model: Any, variables: Any) -> list[str]:
    if isinstance(model, nnx.Module):
        return ["/".join(str(p) for p in parts) for parts, m in nnx.iter_modules(model)
                if parts and isinstance(getattr(m, "kernel", None), nnx.Param)]
    params = variables.get("params", variables) if isinstance(variables, Mapping) else variables
    owners = []
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if names and names[-1] == "kernel":
            owners.append("/".join(names[:-1]))
    return owners
