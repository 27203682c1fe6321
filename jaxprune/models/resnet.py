"""CIFAR ResNet-20 (He et al. 2016, Sec. 4.2): 3 stages x 3 basic blocks, 16/32/64 channels.

Shortcuts: ``shortcut='A'`` (default, the paper's CIFAR choice) is parameter-free: the identity,
subsampled by 2 and zero-padded with the extra channels when a stage changes shape (269,722 params).
``shortcut='B'`` uses a 1x1 projection conv + BatchNorm on those blocks instead (272,474 params).

Only the first conv of each block has freely prunable channels (its output feeds the second conv
only); the second conv's channels are tied to the residual stream. So the neuron criteria see
``BasicBlock_i/Conv_0`` post-ReLU outputs and nothing else.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxprune.errors import PruningError
from jaxprune.models.common import sow_activation


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (post-activation ResNet v1).

    Example:
        >>> b = BasicBlock(16, strides=1)
        >>> v = b.init(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 16)))
        >>> b.apply(v, jnp.ones((2, 8, 8, 16))).shape
        (2, 8, 8, 16)
    """

    channels: int
    strides: int = 1
    shortcut: str = "A"
    inner_channels: int | None = None  # width of the first conv; None = ``channels`` (a shrunk block)
    # Whether the shortcut changes shape (subsample/pad or project); None = decided from the input's
    # shape. A fixed value keeps the block's structure when a structural pruner narrows its stream.
    reshape_shortcut: bool | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        norm = lambda **kw: nn.BatchNorm(use_running_average=not train, momentum=0.9, **kw)
        s = (self.strides, self.strides)
        inner = self.channels if self.inner_channels is None else int(self.inner_channels)
        conv = nn.Conv(inner, (3, 3), strides=s, padding="SAME", use_bias=False)
        y = sow_activation(conv, nn.relu(norm()(conv(x))))
        y = nn.Conv(self.channels, (3, 3), padding="SAME", use_bias=False)(y)
        y = norm()(y)
        reshape = self.reshape_shortcut
        if reshape is None:
            reshape = x.shape[-1] != self.channels or self.strides != 1
        if reshape:
            if self.shortcut == "A":
                x = x[:, :: self.strides, :: self.strides, :]
                extra = self.channels - x.shape[-1]
                x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
            else:
                x = nn.Conv(self.channels, (1, 1), strides=s, use_bias=False, name="shortcut_conv")(x)
                x = norm(name="shortcut_bn")(x)
        return nn.relu(y + x)


class ResNet20(nn.Module):
    """ResNet-20 for 32x32 images; call with ``train=True`` to use and update batch statistics.

    Example (shapes only, via ``jax.eval_shape``; ``init_params(m, key, (1, 32, 32, 3))`` for real):
        >>> m = ResNet20(10)
        >>> v = jax.eval_shape(lambda k: m.init(k, jnp.ones((1, 32, 32, 3))), jax.random.PRNGKey(0))
        >>> sorted(v)
        ['batch_stats', 'params']
        >>> step = lambda v, x: m.apply(v, x, train=True, mutable=['batch_stats'])
        >>> logits, upd = jax.eval_shape(step, v, jnp.ones((2, 32, 32, 3)))
        >>> logits.shape
        (2, 10)
    """

    num_classes: int = 10
    stage_channels: tuple[int, ...] = (16, 32, 64)
    blocks_per_stage: int = 3
    shortcut: str = "A"
    # Inner width of every block's first conv, in block order (None = the stage width). Only these
    # convs can shrink: the others are tied to the residual stream (see jaxprune.shrink).
    block_channels: tuple[int, ...] | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.shortcut not in ("A", "B"):
            raise PruningError(f"ResNet20: shortcut must be 'A' or 'B', got {self.shortcut!r}")
        if x.ndim != 4:
            raise PruningError(f"ResNet20: expected input of shape (N, H, W, C), got {x.shape}")
        n_blocks = len(self.stage_channels) * self.blocks_per_stage
        if self.block_channels is not None and len(self.block_channels) != n_blocks:
            raise PruningError(f"ResNet20: block_channels needs {n_blocks} widths (one per block), "
                               f"got {len(self.block_channels)}")
        x = nn.Conv(self.stage_channels[0], (3, 3), padding="SAME", use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        for stage, channels in enumerate(self.stage_channels):
            for block in range(self.blocks_per_stage):
                strides = 2 if stage > 0 and block == 0 else 1
                i = stage * self.blocks_per_stage + block
                inner = None if self.block_channels is None else int(self.block_channels[i])
                x = BasicBlock(channels, strides, self.shortcut, inner)(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(int(self.num_classes))(x)
