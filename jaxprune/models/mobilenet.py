"""A MobileNetV2-style net (Sandler et al. 2018): linen :class:`MobileNetV2` and nnx :class:`NnxMobileNetV2`.

Stem 3x3 conv + BN + ReLU6, then inverted residual blocks: a 1x1 ``expand`` conv (``t`` times the
input width; absent when ``t == 1``), a 3x3 ``depthwise`` conv (``feature_group_count`` = its
channels), a linear 1x1 ``project`` conv, each followed by BatchNorm (ReLU6 after the first two); the
input is added back when the block keeps its shape. A 1x1 ``last_conv`` + BN + ReLU6, global average
pool and a Dense ``head``.

``blocks`` lists ``(t, channels, repeats, stride)`` rows (the paper's Table 2 by default, with the
stem at stride 1 for 28x28 images); ``width`` multiplies every channel count, rounded to a multiple
of ``divisor`` (the paper's rule: never below ``divisor`` nor 10 % under the exact product), so a
test can build a tiny copy with ``width=0.25, divisor=4``. Both twins use the same leaf names:
``stem_conv``, ``stem_bn``, ``blocks_<i>/{expand,expand_bn,depthwise,depthwise_bn,project,project_bn}``,
``last_conv``, ``last_bn``, ``head``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from jaxprune.errors import PruningError
from jaxprune.models.common import sow_activation, sow_activation_nnx

__all__ = ["MobileNetV2", "NnxMobileNetV2", "block_specs", "make_divisible"]

_MOMENTUM = 0.9
PAPER_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))
"""MobileNetV2's bottleneck table (t, c, n, s); the paper's first stride-2 row runs at stride 1 here
because 28x28 inputs are 8x smaller than ImageNet's."""


class BlockSpec(NamedTuple):
    """One inverted residual block: input/expanded/output channels and stride."""

    cin: int
    hidden: int
    cout: int
    stride: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.cin == self.cout


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below ``divisor`` or 90 % of value.

    Example:
        >>> make_divisible(32 * 0.75), make_divisible(16 * 0.25), make_divisible(16 * 0.25, 2)
        (24, 8, 4)
    """
    d = int(divisor)
    rounded = max(d, int(value + d / 2) // d * d)
    return rounded + d if rounded < 0.9 * value else rounded


def block_specs(blocks: Sequence[Sequence[int]], stem: int, width: float,
                divisor: int) -> list[BlockSpec]:
    """Every block's channels and stride, in order, from the ``(t, c, n, s)`` rows.

    Example:
        >>> block_specs([(1, 8, 1, 1), (6, 8, 2, 2)], stem=8, width=1.0, divisor=4)
        [BlockSpec(cin=8, hidden=8, cout=8, stride=1), BlockSpec(cin=8, hidden=48, cout=8, stride=2), BlockSpec(cin=8, hidden=48, cout=8, stride=1)]
    """
    specs, cin = [], int(stem)
    for row in blocks:
        if len(row) != 4 or min(int(v) for v in row) < 1:
            raise PruningError(f"MobileNetV2: every blocks row is (t, channels, repeats, stride) of "
                               f"positive ints, got {tuple(row)}")
        t, c, n, s = (int(v) for v in row)
        cout = make_divisible(c * width, divisor)
        for i in range(n):
            specs.append(BlockSpec(cin, cin * t, cout, s if i == 0 else 1))
            cin = cout
    return specs


def _sizes(stem_channels: int, last_channels: int, width: float, divisor: int) -> tuple[int, int]:
    if width <= 0:
        raise PruningError(f"MobileNetV2: width must be > 0, got {width}")
    # The paper never thins the last conv below its nominal width (it only widens it for width > 1).
    return make_divisible(stem_channels * width, divisor), make_divisible(
        last_channels * max(1.0, width), divisor)


def _relu6(x: jax.Array) -> jax.Array:
    return jnp.clip(x, 0.0, 6.0)


class InvertedResidual(nn.Module):
    """expand 1x1 -> depthwise 3x3 -> project 1x1, with BN; adds the input when shapes match.

    Example:
        >>> b = InvertedResidual(BlockSpec(8, 48, 8, 1))
        >>> v = b.init(jax.random.PRNGKey(0), jnp.ones((1, 6, 6, 8)))
        >>> b.apply(v, jnp.ones((2, 6, 6, 8))).shape, v['params']['depthwise']['kernel'].shape
        ((2, 6, 6, 8), (3, 3, 1, 48))
    """

    spec: BlockSpec

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        s = self.spec
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=_MOMENTUM,  # noqa: E731
                                         name=name)
        y = x
        if s.hidden != s.cin:
            conv = nn.Conv(s.hidden, (1, 1), use_bias=False, name="expand")
            y = sow_activation(conv, _relu6(norm("expand_bn")(conv(y))))
        y = nn.Conv(s.hidden, (3, 3), strides=(s.stride, s.stride), padding="SAME",
                    feature_group_count=s.hidden, use_bias=False, name="depthwise")(y)
        y = _relu6(norm("depthwise_bn")(y))
        y = norm("project_bn")(nn.Conv(s.cout, (1, 1), use_bias=False, name="project")(y))
        return x + y if s.residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2-style classifier; ``__call__(x (N, H, W, C), train=False) -> logits``.

    Example (a tiny copy):
        >>> m = MobileNetV2(10, width=0.25, divisor=4, blocks=((1, 16, 1, 1), (6, 24, 2, 2)),
        ...                 last_channels=32)
        >>> v = m.init(jax.random.PRNGKey(0), jnp.ones((1, 28, 28, 1)))
        >>> m.apply(v, jnp.ones((2, 28, 28, 1))).shape, v['params']['blocks_1']['expand']['kernel'].shape
        ((2, 10), (1, 1, 4, 24))
    """

    num_classes: int = 10
    width: float = 1.0
    blocks: tuple[tuple[int, int, int, int], ...] = PAPER_BLOCKS
    stem_channels: int = 32
    stem_stride: int = 1
    last_channels: int = 1280
    divisor: int = 8

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4:
            raise PruningError(f"MobileNetV2: expected input of shape (N, H, W, C), got {x.shape}")
        stem, last = _sizes(self.stem_channels, self.last_channels, self.width, self.divisor)
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=_MOMENTUM,  # noqa: E731
                                         name=name)
        st = (int(self.stem_stride),) * 2
        x = nn.Conv(stem, (3, 3), strides=st, padding="SAME", use_bias=False, name="stem_conv")(x)
        x = _relu6(norm("stem_bn")(x))
        for i, spec in enumerate(block_specs(self.blocks, stem, self.width, self.divisor)):
            x = InvertedResidual(spec, name=f"blocks_{i}")(x, train=train)
        conv = nn.Conv(last, (1, 1), use_bias=False, name="last_conv")
        x = sow_activation(conv, _relu6(norm("last_bn")(conv(x))))
        return nn.Dense(int(self.num_classes), name="head")(jnp.mean(x, axis=(1, 2)))


class NnxInvertedResidual(nnx.Module):
    """nnx twin of :class:`InvertedResidual` (same leaf names).

    Example:
        >>> b = NnxInvertedResidual(BlockSpec(8, 48, 8, 1), rngs=nnx.Rngs(0))
        >>> b(jnp.ones((2, 6, 6, 8))).shape
        (2, 6, 6, 8)
    """

    def __init__(self, spec: BlockSpec, *, rngs: nnx.Rngs):
        self.spec = spec
        norm = lambda c: nnx.BatchNorm(c, momentum=_MOMENTUM, rngs=rngs)  # noqa: E731
        if spec.hidden != spec.cin:
            self.expand = nnx.Conv(spec.cin, spec.hidden, (1, 1), use_bias=False, rngs=rngs)
            self.expand_bn = norm(spec.hidden)
        self.depthwise = nnx.Conv(spec.hidden, spec.hidden, (3, 3), strides=spec.stride,
                                  padding="SAME", feature_group_count=spec.hidden, use_bias=False,
                                  rngs=rngs)
        self.depthwise_bn = norm(spec.hidden)
        self.project = nnx.Conv(spec.hidden, spec.cout, (1, 1), use_bias=False, rngs=rngs)
        self.project_bn = norm(spec.cout)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        ura, s = not train, self.spec
        y = x
        if s.hidden != s.cin:
            y = sow_activation_nnx(self.expand, _relu6(self.expand_bn(self.expand(y),
                                                                      use_running_average=ura)))
        y = _relu6(self.depthwise_bn(self.depthwise(y), use_running_average=ura))
        y = self.project_bn(self.project(y), use_running_average=ura)
        return x + y if s.residual else y


class NnxMobileNetV2(nnx.Module):
    """nnx twin of :class:`MobileNetV2`; ``train=True`` updates the batch statistics in place.

    Example:
        >>> m = NnxMobileNetV2(10, in_channels=1, width=0.25, divisor=4,
        ...                    blocks=((1, 16, 1, 1), (6, 24, 2, 2)), last_channels=32, rngs=nnx.Rngs(0))
        >>> m(jnp.ones((2, 28, 28, 1))).shape
        (2, 10)
    """

    def __init__(self, num_classes: int = 10, *, in_channels: int = 1, width: float = 1.0,
                 blocks: Sequence[Sequence[int]] = PAPER_BLOCKS, stem_channels: int = 32,
                 stem_stride: int = 1, last_channels: int = 1280, divisor: int = 8,
                 rngs: nnx.Rngs):
        stem, last = _sizes(stem_channels, last_channels, width, divisor)
        self.stem_conv = nnx.Conv(int(in_channels), stem, (3, 3), strides=int(stem_stride),
                                  padding="SAME", use_bias=False, rngs=rngs)
        self.stem_bn = nnx.BatchNorm(stem, momentum=_MOMENTUM, rngs=rngs)
        specs = block_specs(blocks, stem, width, divisor)
        self.num_blocks = len(specs)
        for i, spec in enumerate(specs):
            setattr(self, f"blocks_{i}", NnxInvertedResidual(spec, rngs=rngs))
        cin = specs[-1].cout if specs else stem
        self.last_conv = nnx.Conv(cin, last, (1, 1), use_bias=False, rngs=rngs)
        self.last_bn = nnx.BatchNorm(last, momentum=_MOMENTUM, rngs=rngs)
        self.head = nnx.Linear(last, int(num_classes), rngs=rngs)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4:
            raise PruningError(f"NnxMobileNetV2: expected input of shape (N, H, W, C), got {x.shape}")
        ura = not train
        x = _relu6(self.stem_bn(self.stem_conv(x), use_running_average=ura))
        for i in range(self.num_blocks):
            x = getattr(self, f"blocks_{i}")(x, train=train)
        x = sow_activation_nnx(self.last_conv, _relu6(self.last_bn(self.last_conv(x),
                                                                   use_running_average=ura)))
        return self.head(jnp.mean(x, axis=(1, 2)))
