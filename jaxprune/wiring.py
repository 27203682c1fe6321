"""Read a model's wiring from its jaxpr: which kernels produce its outputs, which axes they contract.

A bare params tree cannot say which layer holds the classes, nor which axis of a ``(32, 4, 8)``
kernel is its input: both are properties of the *function* that uses the params. The functions here
trace ``fn(params, *example_args)`` once with :func:`jax.make_jaxpr` and follow every parameter leaf:

* a *kernel* is a leaf that reaches a ``dot_general`` or ``conv_general_dilated`` as an operand
  through layout-only operations (dtype casts, reshapes, transposes, broadcasts), as the weights of
  linen/nnx ``Dense``/``Linear``, ``DenseGeneral``/``LinearGeneral``, ``Conv``, ``Einsum`` and the
  attention projections do. Biases, norm scales, embeddings looked up by ``take`` and positional
  tables are not kernels;
* :func:`output_kernels` names the kernels whose contraction output reaches the function's outputs
  without passing through another kernel's contraction — the layers whose units *are* the outputs
  (a classifier head, an LM head), which structured pruning must keep;
* :func:`reduction_axes` gives, per kernel, the axis its contraction runs over (the innermost one
  when several are contracted, e.g. ``head_dim`` of an attention output kernel ``(heads, head_dim,
  out)``; the input-channel axis of a conv kernel) — the axis N:M groups must follow.

``fn`` must return the model's outputs (logits), not a loss. For linen pass
``lambda p, x: model.apply({'params': p, **other_collections}, x)`` with ``p = variables['params']``
(the tree you prune, so the returned paths match it); for nnx split the model, e.g.
``graphdef, params, rest = nnx.split(model, nnx.Param, ...)`` and
``lambda p, x: nnx.merge(graphdef, p, rest)(x)``. Parameters passed into ``scan``/``while``/``cond``
bodies cannot be followed and raise a :class:`~jaxprune.errors.PruningError`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import numpy as np
from jax.extend import core as jex_core

from jaxprune.errors import PruningError
from jaxprune.paths import path_str

__all__ = ["output_kernels", "reduction_axes", "kernel_uses", "KernelUse", "call_body"]

_CONTRACTIONS = ("dot_general", "conv_general_dilated")
_SAME_LAYOUT = ("convert_element_type", "copy", "copy_p", "reduce_precision", "optimization_barrier")
# Higher-order primitives whose body runs once on the operands as given: followed into the body.
_INLINE = ("pjit", "jit", "closed_call", "core_call", "remat", "checkpoint", "custom_jvp_call",
           "custom_vjp_call", "custom_vjp_call_jaxpr", "custom_lin")


class KernelUse(NamedTuple):
    """One contraction of a kernel leaf: its path and the leaf axes contracted (``None`` = unknown).

    >>> KernelUse('fc/kernel', (0,)).axes
    (0,)
    """

    path: str
    axes: tuple[Optional[int], ...]


class _Info(NamedTuple):
    origin: Optional[tuple[int, tuple[Optional[int], ...]]]  # (leaf index, leaf axis of each var axis)
    taint: frozenset  # kernel leaf indices whose outputs reach this value uncontracted


_NONE = _Info(None, frozenset())


def _reshape_view(view: tuple, old: Sequence[int], new: Sequence[int]) -> tuple:
    """Leaf axis of each axis after a reshape: kept where one axis maps to one, innermost of a merge
    or of a split; unknown otherwise."""
    out: list[Optional[int]] = [None] * len(new)
    i = j = 0
    while i < len(old) and j < len(new):
        i0, j0, pi, pj = i, j, old[i], new[j]
        while pi != pj:
            if pi < pj and i + 1 < len(old):
                i += 1
                pi *= old[i]
            elif pi > pj and j + 1 < len(new):
                j += 1
                pj *= new[j]
            else:
                return tuple(out)
        if i == i0 or j == j0:  # one-to-one, a merge into new[j] or a split of old[i]
            out[j] = view[i]
        i, j = i + 1, j + 1
    return tuple(out)


def _view_after(eqn: Any, view: tuple) -> Optional[tuple]:
    """The operand-0 view mapped through a layout-only equation, or None if it is not one."""
    name, p = eqn.primitive.name, eqn.params
    shape_in = tuple(eqn.invars[0].aval.shape)
    shape_out = tuple(eqn.outvars[0].aval.shape)
    if name in _SAME_LAYOUT:
        return view
    if name == "transpose":
        return tuple(view[a] for a in p["permutation"])
    if name == "reshape":
        return _reshape_view(view, shape_in, shape_out)
    if name == "squeeze":
        drop = {d % len(shape_in) for d in p["dimensions"]}
        return tuple(v for a, v in enumerate(view) if a not in drop)
    if name == "broadcast_in_dim":
        out: list[Optional[int]] = [None] * len(shape_out)
        for a, b in enumerate(p["broadcast_dimensions"]):
            out[b] = view[a] if shape_in[a] == shape_out[b] else None
        return tuple(out)
    return None


def call_body(eqn: Any) -> Optional[Any]:
    """The body of a call equation (``jit``, ``custom_jvp_call`` ...): the (Closed)Jaxpr among its
    params that takes exactly the equation's operands and returns its results; None if there is none.

    >>> import jax, jax.numpy as jnp
    >>> eqn = jax.make_jaxpr(jax.jit(jnp.tanh))(jnp.ones(2)).jaxpr.eqns[0]
    >>> [e.primitive.name for e in call_body(eqn).eqns]
    ['tanh']
    """
    for val in eqn.params.values():
        body = getattr(val, "jaxpr", val)
        if hasattr(body, "eqns") and len(body.invars) == len(eqn.invars) \
                and len(body.outvars) == len(eqn.outvars):
            return body
    return None


def _is_body(val: Any) -> bool:
    return hasattr(getattr(val, "jaxpr", val), "eqns")


def _has_body(eqn: Any) -> bool:
    """Whether an equation runs sub-jaxprs (``scan``, ``while``, ``cond`` branches, ...)."""
    return any(_is_body(v) or (isinstance(v, (tuple, list)) and any(_is_body(b) for b in v))
               for v in eqn.params.values())


def _contracted(eqn: Any, operand: int) -> tuple[int, ...]:
    """Axes of operand 0/1 that a contraction equation sums over (conv: the input-channel axis)."""
    if eqn.primitive.name == "dot_general":
        (lc, rc), _ = eqn.params["dimension_numbers"]
        return tuple(lc if operand == 0 else rc)
    spec = eqn.params["dimension_numbers"]  # ConvDimensionNumbers(lhs_spec, rhs_spec, out_spec)
    return (spec.lhs_spec[1],) if operand == 0 else (spec.rhs_spec[1],)


def _walk(jaxpr: Any, infos: list[_Info], uses: list[tuple[int, tuple]], paths: list[str]) -> list:
    env: dict[Any, _Info] = {}

    def read(v: Any) -> _Info:
        return env.get(v, _NONE) if not isinstance(v, jex_core.Literal) else _NONE

    for var, info in zip(jaxpr.invars, infos):
        env[var] = info
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        taint = frozenset().union(*(i.taint for i in ins)) if ins else frozenset()
        if name in _CONTRACTIONS:
            weights = [(o, i.origin) for o, i in enumerate(ins[:2]) if i.origin is not None]
            for operand, (leaf, view) in weights:
                uses.append((leaf, tuple(view[a] for a in _contracted(eqn, operand))))
            if len(weights) == 1:  # a kernel's contraction: its output axis starts here
                outs = [_Info(None, frozenset({weights[0][1][0]}))]
            else:
                outs = [_Info(None, taint)]
        elif name in _INLINE and call_body(eqn) is not None:
            outs = _walk(call_body(eqn), ins, uses, paths)
        elif _has_body(eqn):
            carried = [i.origin[0] for i in ins if i.origin is not None]
            if carried:
                raise PruningError(
                    f"wiring: parameter leaf '{paths[carried[0]]}' enters a '{name}' body, which "
                    "cannot be followed; trace a function without it (e.g. unroll the loop)")
            outs = [_Info(None, taint)] * len(eqn.outvars)
        else:
            view = None
            if ins and ins[0].origin is not None:
                view = _view_after(eqn, ins[0].origin[1])
            origin = (ins[0].origin[0], view) if view is not None else None
            outs = [_Info(origin, taint)] + [_Info(None, taint)] * (len(eqn.outvars) - 1)
        for var, info in zip(eqn.outvars, outs):
            env[var] = info
    return [read(v) for v in jaxpr.outvars]


def _trace(fn: Callable[..., Any], params: Any, args: tuple) -> tuple[list[str], list, list]:
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    paths = [path_str(p) for p, _ in flat]
    try:
        closed = jax.make_jaxpr(fn)(params, *args)
    except Exception as err:  # the user's function failed: say where, keep the cause
        raise PruningError(f"wiring: fn(params, *example_args) failed to trace: {err}") from err
    jaxpr = closed.jaxpr
    infos = [_Info((i, tuple(range(np.ndim(x)))), frozenset()) for i, (_, x) in enumerate(flat)]
    infos += [_NONE] * (len(jaxpr.invars) - len(infos))
    uses: list[tuple[int, tuple]] = []
    outs = _walk(jaxpr, infos, uses, paths)
    return paths, uses, outs


def kernel_uses(fn: Callable[..., Any], params: Any, *example_args: Any) -> list[KernelUse]:
    """Every contraction of a parameter leaf in ``fn(params, *example_args)``, in trace order.

    >>> import jax.numpy as jnp
    >>> p = {'w': jnp.ones((3, 4)), 'b': jnp.zeros(4)}
    >>> kernel_uses(lambda p, x: x @ p['w'] + p['b'][None, :], p, jnp.ones((2, 3)))
    [KernelUse(path='w', axes=(0,))]
    """
    paths, uses, _ = _trace(fn, params, example_args)
    return [KernelUse(paths[leaf], axes) for leaf, axes in uses]


def output_kernels(fn: Callable[..., Any], params: Any, *example_args: Any) -> list[str]:
    """Paths of the kernel leaves whose units are ``fn``'s outputs (pass as ``Neurons(outputs=...)``).

    A kernel qualifies when the output of its contraction reaches an output of ``fn`` through
    element-wise operations, normalisations, residual adds and activation-by-activation products
    (attention scores), but through no other kernel's contraction.

    >>> import jax.numpy as jnp
    >>> p = {'hidden': jnp.ones((3, 4)), 'head': jnp.ones((4, 2))}
    >>> output_kernels(lambda p, x: jnp.tanh(x @ p['hidden']) @ p['head'], p, jnp.ones((1, 3)))
    ['head']
    """
    paths, _, outs = _trace(fn, params, example_args)
    reached = frozenset().union(*(o.taint for o in outs)) if outs else frozenset()
    return [paths[i] for i in sorted(reached)]


def reduction_axes(fn: Callable[..., Any], params: Any, *example_args: Any) -> dict[str, int]:
    """``{kernel path: axis}``: the axis each kernel's contraction runs over (pass as ``NM(axis=...)``).

    Where several axes are contracted the innermost (last) one is given, so that runs of consecutive
    weights along it are runs along the flattened reduction dimension; for a conv it is the input-
    channel axis. A kernel contracted along different axes in different places, or along an axis a
    reshape hides, raises a :class:`PruningError` naming it.

    >>> import jax.numpy as jnp
    >>> p = {'q': jnp.ones((8, 2, 4)), 'o': jnp.ones((2, 4, 8))}
    >>> def attn_like(p, x):
    ...     h = jnp.einsum('bi,ihd->bhd', x, p['q'])
    ...     return jnp.einsum('bhd,hdo->bo', h, p['o'])
    >>> reduction_axes(attn_like, p, jnp.ones((1, 8)))
    {'q': 0, 'o': 1}
    """
    paths, uses, _ = _trace(fn, params, example_args)
    out: dict[str, int] = {}
    for leaf, axes in uses:
        path = paths[leaf]
        known = [a for a in axes if a is not None]
        if not known or len(known) != len(axes):
            raise PruningError(f"wiring: the contracted axes of kernel '{path}' pass through a reshape "
                               "that hides them; pass NM(n, m, axis=...) for it")
        axis = max(known)
        if out.get(path, axis) != axis:
            raise PruningError(f"wiring: kernel '{path}' is contracted along axis {out[path]} in one "
                               f"place and {axis} in another; pass NM(n, m, axis=...) for it")
        out[path] = axis
    return out
