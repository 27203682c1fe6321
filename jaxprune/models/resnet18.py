"""ResNet-18 with a CIFAR stem (He et al. 2016), linen :class:`ResNet18` and nnx :class:`NnxResNet18`.

Stem: one 3x3 conv (stride 1, no max-pool, as CIFAR ResNets do on small images) + BatchNorm + ReLU.
Then four stages of two :class:`~jaxprune.models.BasicBlock` each (64/128/256/512 channels by
default; strides 1, 2, 2, 2) with 1x1 projection shortcuts (conv + BN, ``shortcut='B'``) wherever a
block changes shape, a global average pool and a Dense classifier. 11.17 M parameters at the default
widths with 10 classes. ``stage_channels`` and ``blocks_per_stage`` are arguments so tests can build a
tiny copy.

Both twins name their leaves alike (``Conv_0``, ``BatchNorm_0``, ``BasicBlock_3/shortcut_conv``,
``Dense_0``): ``nnx.to_pure_dict(nnx.state(m, nnx.Param))`` is the linen ``params`` tree and
``nnx.state(m, nnx.BatchStat)`` its ``batch_stats``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from jaxprune.errors import PruningError
from jaxprune.models.common import sow_activation_nnx
from jaxprune.models.resnet import BasicBlock

__all__ = ["NnxBasicBlock", "NnxResNet18", "ResNet18"]

_MOMENTUM = 0.9  # BatchNorm running-average momentum of both twins (resnet.py uses the same)


def _check_image(x: jax.Array, model: str) -> None:
    if x.ndim != 4:
        raise PruningError(f"{model}: expected input of shape (N, H, W, C), got {x.shape}")


def _block_plan(stage_channels: Sequence[int], blocks_per_stage: int) -> list[tuple[int, int, bool]]:
    """(channels, stride, projected shortcut?) of every block in order; the first block of stages
    2.. halves the map."""
    if int(blocks_per_stage) < 1 or len(stage_channels) == 0:
        raise PruningError(f"ResNet18: need at least one stage and one block per stage, got "
                           f"stage_channels={tuple(stage_channels)}, blocks_per_stage={blocks_per_stage}")
    plan, cin = [], int(stage_channels[0])
    for s, c in enumerate(stage_channels):
        for b in range(int(blocks_per_stage)):
            stride = 2 if s > 0 and b == 0 else 1
            plan.append((int(c), stride, stride != 1 or cin != int(c)))
            cin = int(c)
    return plan


class ResNet18(nn.Module):
    """ResNet-18, CIFAR stem; ``__call__(x (N, H, W, C), train=False) -> logits``.

    Example (a tiny copy; the default widths are 64-128-256-512):
        >>> m = ResNet18(10, stage_channels=(4, 8), blocks_per_stage=1)
        >>> v = m.init(jax.random.PRNGKey(0), jnp.ones((1, 28, 28, 1)))
        >>> sorted(v), m.apply(v, jnp.ones((2, 28, 28, 1))).shape
        (['batch_stats', 'params'], (2, 10))
    """

    num_classes: int = 10
    stage_channels: tuple[int, ...] = (64, 128, 256, 512)
    blocks_per_stage: int = 2

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        _check_image(x, "ResNet18")
        plan = _block_plan(self.stage_channels, self.blocks_per_stage)
        x = nn.Conv(plan[0][0], (3, 3), padding="SAME", use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=_MOMENTUM)(x))
        # The projection is fixed by the architecture, not re-decided from shapes, so a structurally
        # pruned copy (narrower stream, same attributes) keeps every block's parameters.
        for channels, stride, project in plan:
            x = BasicBlock(channels, stride, shortcut="B", reshape_shortcut=project)(x, train=train)
        return nn.Dense(int(self.num_classes))(jnp.mean(x, axis=(1, 2)))


class NnxBasicBlock(nnx.Module):
    """nnx twin of :class:`~jaxprune.models.BasicBlock` with projection shortcuts (``shortcut='B'``).

    Example:
        >>> b = NnxBasicBlock(4, 8, strides=2, rngs=nnx.Rngs(0))
        >>> b(jnp.ones((2, 8, 8, 4))).shape, b.shortcut_conv.kernel.shape
        ((2, 4, 4, 8), (1, 1, 4, 8))
    """

    def __init__(self, in_channels: int, channels: int, strides: int = 1, *, rngs: nnx.Rngs):
        s = (int(strides), int(strides))
        conv = lambda i, o, k, st: nnx.Conv(i, o, k, strides=st, padding="SAME",  # noqa: E731
                                            use_bias=False, rngs=rngs)
        norm = lambda c: nnx.BatchNorm(c, momentum=_MOMENTUM, rngs=rngs)  # noqa: E731
        self.Conv_0, self.BatchNorm_0 = conv(in_channels, channels, (3, 3), s), norm(channels)
        self.Conv_1, self.BatchNorm_1 = conv(channels, channels, (3, 3), 1), norm(channels)
        self.projected = int(in_channels) != int(channels) or int(strides) != 1
        if self.projected:
            self.shortcut_conv = conv(in_channels, channels, (1, 1), s)
            self.shortcut_bn = norm(channels)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        ura = not train
        y = sow_activation_nnx(self.Conv_0, nnx.relu(self.BatchNorm_0(self.Conv_0(x),
                                                                      use_running_average=ura)))
        y = self.BatchNorm_1(self.Conv_1(y), use_running_average=ura)
        if self.projected:
            x = self.shortcut_bn(self.shortcut_conv(x), use_running_average=ura)
        return nnx.relu(y + x)


class NnxResNet18(nnx.Module):
    """nnx twin of :class:`ResNet18`; ``train=True`` uses and updates the batch statistics in place.

    Example:
        >>> m = NnxResNet18(10, in_channels=1, stage_channels=(4, 8), blocks_per_stage=1,
        ...                 rngs=nnx.Rngs(0))
        >>> m(jnp.ones((2, 28, 28, 1))).shape, m.BasicBlock_1.shortcut_conv.kernel.shape
        ((2, 10), (1, 1, 4, 8))
    """

    def __init__(self, num_classes: int = 10, *, in_channels: int = 1,
                 stage_channels: Sequence[int] = (64, 128, 256, 512), blocks_per_stage: int = 2,
                 rngs: nnx.Rngs):
        plan = _block_plan(stage_channels, blocks_per_stage)
        c = plan[0][0]
        self.Conv_0 = nnx.Conv(int(in_channels), c, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
        self.BatchNorm_0 = nnx.BatchNorm(c, momentum=_MOMENTUM, rngs=rngs)
        self.num_blocks = len(plan)
        for i, (channels, stride, _) in enumerate(plan):
            setattr(self, f"BasicBlock_{i}", NnxBasicBlock(c, channels, stride, rngs=rngs))
            c = channels
        self.Dense_0 = nnx.Linear(c, int(num_classes), rngs=rngs)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        _check_image(x, "NnxResNet18")
        x = nnx.relu(self.BatchNorm_0(self.Conv_0(x), use_running_average=not train))
        for i in range(self.num_blocks):
            x = getattr(self, f"BasicBlock_{i}")(x, train=train)
        return self.Dense_0(jnp.mean(x, axis=(1, 2)))
