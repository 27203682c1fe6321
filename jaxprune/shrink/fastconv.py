"""A faster convolution for the small channel counts a shrunk model has, on XLA:CPU.

"Pruned but no faster": XLA:CPU runs a 3x3 convolution with 1-3 input channels and 4-16 output
channels through a slow generic kernel, slower than the same conv with 32 output channels, so a
shrunk SmallCNN barely speeds up (``docs/shrink.md``). :func:`conv_general_dilated` is a drop-in
``lax.conv_general_dilated`` that computes such convs as a sum of shifted, broadcast products
(``sum over taps t, input channels c of x_shift_t[..., c] * w[t, c, :]``), which XLA emits as one
vectorised loop, and leaves every other conv to XLA. :func:`use_shifted` is the rule (from shapes
only); :func:`fast_convs` makes every ``flax.linen.Conv`` of a model use it, :func:`with_fast_convs`
does the same for an nnx module. Parameters are untouched, so shrunk params load unchanged.
Depthwise convs (MobileNetV2's 3x3 layers) take the shifted form at any width: XLA:CPU runs them
through its generic grouped-conv loop, 12-41x slower at batch 64 (``scripts/bench_depthwise.py``).

Measured on the 2-core dev box (batch 256, conv + bias + ReLU + 2x2 average pool, median ms):
1->8 at 28x28: XLA 24 ms, shifted 5.5 ms; 1->4: 20 vs 4.5; 3->16: 35 vs 7.3; 1->32: tie (XLA's own
YNNPACK path is fast there); 1->64: XLA 20 vs 87, so wide outputs stay with XLA; at 14x14, 4->16:
9.7 vs 3.7, 8->8: 7.0 vs 4.5, 8->16: 10 vs 16 (XLA keeps it).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx
from jax import lax

from jaxprune.errors import PruningError

__all__ = ["MAX_OUT_FEATURES", "MAX_PIXEL_MACS", "conv_general_dilated", "fast_convs", "is_depthwise",
           "shifted_conv", "use_shifted", "with_fast_convs"]

MAX_PIXEL_MACS = 900
"""Largest taps x input x output channels (multiply-adds per output pixel) the shifted form takes: it
is one broadcast multiply-add per tap and input channel, so past this XLA's GEMM-based conv wins
(3x3: 3->24 = 648 and 4->16 = 576 shifted are 2.6x faster, 8->8 = 576 1.6x faster, 8->16 = 1152 1.5x slower)."""

MAX_OUT_FEATURES = 24
"""Widest output the shifted form takes: from 32 output channels XLA:CPU fuses the conv into its
YNNPACK path, which is as fast (1->32) or only 2x slower (3->32), so a dense first layer stays XLA's."""


def _channels_last(nd: int) -> lax.ConvDimensionNumbers:
    spatial = tuple(range(1, nd + 1))
    return lax.ConvDimensionNumbers((0, nd + 1, *spatial), (nd + 1, nd, *range(nd)), (0, nd + 1, *spatial))


def _dims(lhs_shape: Sequence[int], rhs_shape: Sequence[int], dimension_numbers: Any):
    return lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape), dimension_numbers)


def use_shifted(lhs_shape: Sequence[int], rhs_shape: Sequence[int], dimension_numbers: Any = None, *,
                lhs_dilation: Sequence[int] | None = None, feature_group_count: int = 1,
                batch_group_count: int = 1) -> bool:
    """Whether :func:`conv_general_dilated` computes this conv as shifted products (the rule).

    Yes for a channels-last (NHWC / HWIO) conv without input dilation that is either ungrouped with
    at most :data:`MAX_OUT_FEATURES` output channels and at most :data:`MAX_PIXEL_MACS` multiply-adds
    per output pixel (kernel taps x input channels x output channels), or depthwise
    (:func:`is_depthwise`, any width: XLA:CPU's grouped conv is 12-41x slower there); no otherwise
    (XLA's conv).

    Example:
        >>> dn = ('NHWC', 'HWIO', 'NHWC')
        >>> use_shifted((256, 28, 28, 1), (3, 3, 1, 8), dn), use_shifted((256, 14, 14, 32), (3, 3, 32, 64), dn)
        (True, False)
        >>> use_shifted((64, 14, 14, 144), (3, 3, 1, 144), dn, feature_group_count=144)
        True
    """
    nd = len(lhs_shape) - 2
    if nd < 1 or len(rhs_shape) != nd + 2 or batch_group_count != 1:
        return False
    if lhs_dilation is not None and any(int(d) != 1 for d in lhs_dilation):
        return False
    if _dims(lhs_shape, rhs_shape, dimension_numbers) != _channels_last(nd):
        return False
    if feature_group_count != 1:
        return is_depthwise(lhs_shape, rhs_shape, feature_group_count)
    return rhs_shape[-1] <= MAX_OUT_FEATURES and math.prod(rhs_shape) <= MAX_PIXEL_MACS


def is_depthwise(lhs_shape: Sequence[int], rhs_shape: Sequence[int], feature_group_count: int) -> bool:
    """Whether a channels-last conv is depthwise: one input channel per group, every input channel
    its own group (``feature_group_count`` = input channels), ``m`` output channels per group.

    Example:
        >>> is_depthwise((8, 14, 14, 96), (3, 3, 1, 96), 96)
        True
        >>> is_depthwise((8, 14, 14, 96), (3, 3, 2, 96), 48)
        False
    """
    cin, g = int(lhs_shape[-1]), int(feature_group_count)
    return g > 1 and g == cin and int(rhs_shape[-2]) == 1 and int(rhs_shape[-1]) % g == 0


def shifted_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
                 rhs_dilation: Sequence[int] | None = None,
                 preferred_element_type: Any = None, feature_group_count: int = 1) -> jax.Array:
    """Channels-last convolution as a sum of shifted broadcast products; equals ``lax`` within rounding.

    ``lhs`` is (N, *spatial, Cin), ``rhs`` (*window, Cin, Cout); ``padding`` is 'SAME', 'VALID',
    'SAME_LOWER' or one (low, high) pair per spatial dim, as in ``lax.conv_general_dilated``. With
    ``feature_group_count`` = Cin the conv is depthwise: ``rhs`` is (*window, 1, Cout), Cout a multiple
    of Cin, output channel ``c * m + j`` reading input channel ``c`` (``lax``'s layout); each tap is then
    one elementwise multiply-add over all channels. Other groupings raise.

    Example:
        >>> x, w = jnp.ones((2, 5, 5, 1)), jnp.ones((3, 3, 1, 4))
        >>> y = shifted_conv(x, w, (1, 1), 'SAME')
        >>> y.shape, float(y[0, 2, 2, 0]), float(y[0, 0, 0, 0])
        ((2, 5, 5, 4), 9.0, 4.0)
    """
    nd = lhs.ndim - 2
    window, cin = rhs.shape[:nd], rhs.shape[nd]
    depthwise = int(feature_group_count) != 1
    if depthwise and not is_depthwise(lhs.shape, rhs.shape, feature_group_count):
        raise PruningError(f"shifted_conv: feature_group_count={feature_group_count} with input "
                           f"{lhs.shape} and kernel {rhs.shape} is not depthwise (one group per input "
                           "channel, kernel (*window, 1, m * channels)); only depthwise grouping is "
                           "supported")
    if not depthwise and lhs.shape[-1] != cin:
        raise PruningError(f"shifted_conv: input has {lhs.shape[-1]} channels, kernel {rhs.shape} "
                           f"expects {cin}")
    mult = rhs.shape[-1] // lhs.shape[-1] if depthwise else 1
    strides = tuple(int(s) for s in window_strides)
    dil = tuple(int(d) for d in rhs_dilation) if rhs_dilation is not None else (1,) * nd
    spatial = lhs.shape[1:-1]
    eff = tuple((k - 1) * d + 1 for k, d in zip(window, dil))
    pads = lax.padtype_to_pads(spatial, eff, strides, padding) if isinstance(padding, str) else padding
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    out_shape = tuple((n + lo + hi - e) // s + 1 for n, (lo, hi), e, s in zip(spatial, pads, eff, strides))
    dtype = preferred_element_type or jnp.result_type(lhs, rhs)
    xp = lax.pad(lhs.astype(dtype), jnp.zeros((), dtype), ((0, 0, 0), *((lo, hi, 0) for lo, hi in pads),
                                                           (0, 0, 0)))
    w = rhs.astype(dtype)
    out = None
    for tap in itertools.product(*(range(k) for k in window)):
        start = (0, *(t * d for t, d in zip(tap, dil)), 0)
        limit = (xp.shape[0], *(st + (o - 1) * s + 1 for st, o, s in zip(start[1:-1], out_shape, strides)),
                 xp.shape[-1])
        xs = lax.slice(xp, start, limit, (1, *strides, 1))
        if depthwise:  # output channel c * mult + j reads input channel c
            taps = w[tap + (0,)].reshape((1,) * (nd + 1) + (-1,))
            term = (jnp.repeat(xs, mult, axis=-1) if mult > 1 else xs) * taps
            out = term if out is None else out + term
            continue
        for c in range(cin):
            term = xs[..., c:c + 1] * w[tap + (c,)].reshape((1,) * (nd + 1) + (-1,))
            out = term if out is None else out + term
    # An identity for this dtype that XLA:CPU keeps: without it the elementwise sum fuses into the
    # next reduce-window / bias-ReLU YNNPACK fusion, which then runs ~5x slower than conv + fence.
    info = jnp.finfo(dtype)
    return lax.reduce_precision(out, exponent_bits=info.nexp, mantissa_bits=info.nmant)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision: Any = None, preferred_element_type: Any = None,
                         **kwargs: Any) -> jax.Array:
    """Drop-in ``lax.conv_general_dilated``: the shifted form where :func:`use_shifted` says so.

    Example:
        >>> x, w = jnp.ones((2, 6, 6, 1)), jnp.ones((3, 3, 1, 8))
        >>> dn = ('NHWC', 'HWIO', 'NHWC')
        >>> a = conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=dn)
        >>> b = lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=dn)
        >>> bool(jnp.allclose(a, b))
        True
    """
    if use_shifted(lhs.shape, rhs.shape, dimension_numbers, lhs_dilation=lhs_dilation,
                   feature_group_count=feature_group_count, batch_group_count=batch_group_count):
        return shifted_conv(lhs, rhs, window_strides, padding, rhs_dilation, preferred_element_type,
                            feature_group_count)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count,
                                    precision, preferred_element_type, **kwargs)


def _swap_linen_conv(next_fun, args, kwargs, context):
    module = context.module
    if (context.method_name != "__call__" or not isinstance(module, nn.Conv)
            or module.conv_general_dilated is not None or module.conv_general_dilated_cls is not None):
        return next_fun(*args, **kwargs)
    # Conv reads this field at call time; the bound module is a frozen dataclass, so the field is
    # set with object.__setattr__ for this one call only and restored after.
    object.__setattr__(module, "conv_general_dilated", conv_general_dilated)
    try:
        return next_fun(*args, **kwargs)
    finally:
        object.__setattr__(module, "conv_general_dilated", None)


@contextlib.contextmanager
def fast_convs() -> Iterator[None]:
    """Inside this context every ``flax.linen.Conv`` call uses :func:`conv_general_dilated`.

    Convs that set their own ``conv_general_dilated`` keep it. Trace (jit) inside the context; the
    compiled function keeps the lowering it was traced with.

    Example:
        >>> from jaxprune.models import SmallCNN, init_params
        >>> m = SmallCNN(10, channels=(8, 16), hidden=32)
        >>> v = init_params(m, jax.random.PRNGKey(0), (1, 28, 28, 1))
        >>> x = jnp.ones((2, 28, 28, 1))
        >>> with fast_convs():
        ...     y = jax.jit(m.apply)(v, x)
        >>> bool(jnp.allclose(y, m.apply(v, x), atol=1e-5))
        True
    """
    with nn.intercept_methods(_swap_linen_conv):
        yield


def with_fast_convs(module: nnx.Module) -> nnx.Module:
    """A copy of an nnx module whose ``nnx.Conv`` layers use :func:`conv_general_dilated`.

    Same parameters (the arrays are shared, not copied); convs with a custom
    ``conv_general_dilated`` keep it.

    Example:
        >>> from jaxprune.models import NnxSmallCNN
        >>> m = NnxSmallCNN(10, channels=(8, 16), hidden=32, rngs=nnx.Rngs(0))
        >>> fast = with_fast_convs(m)
        >>> x = jnp.ones((2, 28, 28, 1))
        >>> bool(jnp.allclose(fast(x), m(x), atol=1e-5)), fast.Conv_0.conv_general_dilated is m.Conv_0.conv_general_dilated
        (True, False)
    """
    if not isinstance(module, nnx.Module):
        raise PruningError(f"with_fast_convs: expected a flax.nnx.Module, got {type(module).__name__}")
    copy = nnx.clone(module)
    for _, sub in nnx.iter_modules(copy):
        if isinstance(sub, nnx.Conv) and sub.conv_general_dilated is lax.conv_general_dilated:
            sub.conv_general_dilated = conv_general_dilated
    return copy
