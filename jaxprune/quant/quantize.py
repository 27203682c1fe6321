"""Symmetric post-training quantization and fake quantization (QAT) that keep pruned zeros at zero.

Formula (symmetric, no zero point, so 0 maps to the integer 0 and back to exactly 0.0):

    qmax  = 2**(bits-1) - 1                 # 127 for 8 bits, 7 for 4 bits
    scale = max|w| / qmax                   # per output channel (reduce all axes but ``axis``) or per tensor
    q     = clip(round(w / scale), -qmax, qmax)   stored as int8
    w'    = q * scale                       # |w - w'| <= scale / 2

An all-zero channel gets ``scale = 1``: any scale represents it exactly, and 1 keeps a later division
by the scale finite. Bit widths 2..8 are supported (values always stored in int8; the packed size
``ceil(n * bits / 8)`` is what :mod:`jaxprune.quant.size` counts).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxprune.errors import PruningError
from jaxprune.paths import path_str
from jaxprune.quant._tree import (
    Include,
    check_finite,
    is_float,
    map_with_paths,
    resolve_include,
)

GRANULARITIES = ("per_channel", "per_tensor")


@functools.partial(jax.tree_util.register_dataclass, data_fields=("values", "scale"),
                   meta_fields=("bits", "axis"))
@dataclasses.dataclass(frozen=True)
class QuantizedArray:
    """One quantized leaf: int8 ``values`` (the leaf's shape) and float32 ``scale``.

    ``scale`` keeps the leaf's rank (size-1 on every axis but the channel axis), so
    ``values * scale`` broadcasts without rank promotion. ``bits`` and ``axis`` (``None`` = per tensor)
    are static pytree metadata, so a QuantizedArray passes through ``jit``.

    >>> import jax.numpy as jnp
    >>> qa = quantize(jnp.array([[1.0, 0.0], [-0.5, 2.0]]), bits=8)
    >>> qa.values.dtype, qa.scale.shape, qa.packed_nbytes
    (dtype('int8'), (1, 2), 4)
    """

    values: jax.Array
    scale: jax.Array
    bits: int
    axis: int | None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    @property
    def packed_nbytes(self) -> int:
        """Bytes of the values packed at ``bits`` per element (4-bit: two per byte)."""
        return math.ceil(math.prod(self.values.shape) * self.bits / 8)


# A params tree whose selected leaves are QuantizedArray nodes; the rest are the original leaves.
QuantizedTree = Any


def is_qarray(x: Any) -> bool:
    return isinstance(x, QuantizedArray)


def check_bits(bits: Any) -> int:
    # bool is an int subclass; True would silently mean 1 bit.
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise PruningError(f"bits: expected an int in 2..8 (int8 storage), got {bits!r}")
    return bits


def _check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise PruningError(f"granularity: expected one of {GRANULARITIES}, got {granularity!r}")


def _channel_axis(path: str, ndim: int, axis: int | None) -> int | None:
    if axis is None:
        return None
    if not -ndim <= axis < ndim:
        raise PruningError(f"{path}: axis {axis} is out of range for a leaf of rank {ndim}")
    return axis % ndim


def _qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


# Jitted so an eager call is one compiled program per shape instead of a dozen dispatched ops.
@functools.partial(jax.jit, static_argnums=(1, 2))
def _quantize_array(w: jax.Array, bits: int, axis: int | None) -> tuple[jax.Array, jax.Array]:
    w = jnp.asarray(w, jnp.float32)
    reduce_axes = tuple(a for a in range(w.ndim) if a != axis)
    absmax = jnp.max(jnp.abs(w), axis=reduce_axes, keepdims=True)
    scale = absmax / _qmax(bits)
    # All-zero channel: scale 0 would give 0/0 = NaN; any positive scale encodes zeros exactly.
    scale = jnp.where(scale > 0, scale, jnp.ones_like(scale))
    q = jnp.clip(jnp.round(w / scale), -_qmax(bits), _qmax(bits)).astype(jnp.int8)
    return q, scale


def _resolve(bits: int, granularity: str, axis: int | None) -> int | None:
    check_bits(bits)
    _check_granularity(granularity)
    return None if granularity == "per_tensor" else axis


def quantize(params: Any, bits: int = 8, *, granularity: str = "per_channel", axis: int = -1,
             include: Include | None = None) -> QuantizedTree:
    """Quantize the selected leaves of ``params`` to symmetric int8 values plus float32 scales.

    Args:
      params: any pytree (or a single array, then the result is one QuantizedArray).
      bits: 2..8; values lie in ``[-(2**(bits-1)-1), 2**(bits-1)-1]`` (int4: ``[-7, 7]``).
      granularity: ``'per_channel'`` (one scale per index of ``axis``) or ``'per_tensor'``.
      axis: the output-channel axis; ``-1`` fits Dense ``(in, out)`` and conv HWIO kernels.
      include: predicate ``(path, leaf) -> bool`` with ``path`` like ``'params/Dense_0/kernel'``;
        default: floating leaves named ``kernel`` with ``ndim >= 2`` (a tree with floating matrices
        but no ``kernel`` leaf is an error: pass ``include=jaxprune.matrices``). Unselected leaves
        pass through unchanged.

    Raises PruningError on a bad ``bits``/``granularity``, or, before any compute, on a selected
    leaf with NaN/inf or an ``axis`` out of range (the message names the leaf). Traced leaves
    (inside ``jit``) cannot be checked for NaN.

    >>> import jax.numpy as jnp
    >>> q = quantize({'kernel': jnp.array([[0.0, 3.0], [1.0, -7.0]]), 'bias': jnp.ones(2)}, bits=4)
    >>> q['kernel'].values.tolist(), q['kernel'].scale.shape, q['bias'].dtype
    ([[0, 3], [7, -7]], (1, 2), dtype('float32'))
    """
    channel_axis = _resolve(bits, granularity, axis)
    include = resolve_include(include, params, is_leaf=is_qarray)

    flat, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_qarray)
    # Validate every selected leaf first so a bad leaf fails before any leaf is computed.
    plan: list[tuple[bool, int | None]] = []
    for key_path, leaf in flat:
        path = path_str(key_path)
        if is_qarray(leaf) or not include(path, leaf):
            plan.append((False, None))
            continue
        if not is_float(leaf):
            raise PruningError(f"{path}: only floating leaves can be quantized, got {leaf.dtype}")
        check_finite(path, leaf)
        plan.append((True, _channel_axis(path, leaf.ndim, channel_axis)))

    out = []
    for (_, leaf), (selected, leaf_axis) in zip(flat, plan):
        if selected:
            values, scale = _quantize_array(leaf, bits, leaf_axis)
            leaf = QuantizedArray(values=values, scale=scale, bits=bits, axis=leaf_axis)
        out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)


@jax.jit
def _dequantize_array(values: jax.Array, scale: jax.Array) -> jax.Array:
    return values.astype(jnp.float32) * scale


def dequantize(qtree: QuantizedTree) -> Any:
    """Turn every QuantizedArray back into a float32 array (``values * scale``); other leaves pass.

    >>> import jax.numpy as jnp
    >>> w = jnp.array([[0.0, 2.0], [1.0, -4.0]])
    >>> [round(v, 3) for v in dequantize(quantize(w, bits=8)).ravel().tolist()]  # 2 -> 64 * 4/127
    [0.0, 2.016, 1.0, -4.0]
    """
    def convert(leaf: Any) -> Any:
        if not is_qarray(leaf):
            return leaf
        return _dequantize_array(leaf.values, leaf.scale)

    return jax.tree_util.tree_map(convert, qtree, is_leaf=is_qarray)


def _fake_quant_value(w: jax.Array, bits: int, axis: int | None) -> jax.Array:
    values, scale = _quantize_array(w, bits, axis)
    return (values.astype(jnp.float32) * scale).astype(w.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _fake_quant_ste(w: jax.Array, bits: int, axis: int | None) -> jax.Array:
    return _fake_quant_value(w, bits, axis)


@_fake_quant_ste.defjvp
def _fake_quant_ste_jvp(bits, axis, primals, tangents):
    # Straight-through estimator (Bengio et al. 2013): treat round() as identity for gradients.
    # A custom_jvp (not custom_vjp) so forward-mode, grad and jvp-of-grad all work; the tangent is
    # linear in w_dot, so JAX transposes it for reverse mode.
    (w,), (w_dot,) = primals, tangents
    return _fake_quant_value(w, bits, axis), w_dot


def fake_quant(w: jax.Array, bits: int = 8, axis: int | None = -1) -> jax.Array:
    """Forward ``dequantize(quantize(w))`` with an identity (straight-through) gradient, for QAT.

    ``axis=None`` quantizes per tensor. Output dtype is ``w.dtype``; zeros stay exactly zero.

    >>> import jax, jax.numpy as jnp
    >>> w = jnp.array([[0.0, 0.3], [1.0, -1.0]])
    >>> jax.grad(lambda w: (fake_quant(w, 2) * jnp.arange(4.0).reshape(2, 2)).sum())(w).tolist()
    [[0.0, 1.0], [2.0, 3.0]]
    """
    check_bits(bits)
    w = jnp.asarray(w)
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise PruningError(f"fake_quant: expected a floating array, got {w.dtype}")
    return _fake_quant_ste(w, bits, _channel_axis("fake_quant", w.ndim, axis))


def fake_quant_tree(params: Any, bits: int = 8, *, granularity: str = "per_channel", axis: int = -1,
                    include: Include | None = None) -> Any:
    """Apply :func:`fake_quant` to the selected leaves (same selection as :func:`quantize`).

    Jit-able: use it inside the loss for quantization-aware training; the result has the params'
    structure and dtypes.

    >>> import jax.numpy as jnp
    >>> out = fake_quant_tree({'kernel': jnp.array([[0.0, 0.3], [1.0, -1.0]]), 'bias': jnp.ones(2)}, 2)
    >>> out['kernel'].tolist(), out['bias'].tolist()
    ([[0.0, 0.0], [1.0, -1.0]], [1.0, 1.0])
    """
    channel_axis = _resolve(bits, granularity, axis)
    include = resolve_include(include, params)

    def convert(path: str, leaf: Any) -> Any:
        if not include(path, leaf):
            return leaf
        if not is_float(leaf):
            raise PruningError(f"{path}: only floating leaves can be fake-quantized, got {leaf.dtype}")
        check_finite(path, leaf)
        leaf_axis = _channel_axis(path, leaf.ndim, channel_axis)
        return _fake_quant_ste(leaf, bits, leaf_axis)

    return map_with_paths(convert, params)
