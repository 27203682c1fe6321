"""Flax linen classifiers: MLP (tutorial 784-128-10, LeNet-300-100), LeNet-5 and a small CNN.

Every hidden layer's post-ReLU output is sown with :func:`sow_activation` (a no-op unless the
``'activations'`` collection is mutable), so :mod:`jaxprune.neurons` can measure it. Output layers are
never sown: their units are the classes and are never pruned.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp  # noqa: F401  (used by the doctest examples)
from flax import linen as nn

from jaxprune.errors import PruningError
from jaxprune.models.common import flatten_examples, sow_activation


class MLP(nn.Module):
    """Fully connected ReLU network; ``features`` lists every layer width, the last one is the logits.

    Layers are ``Dense_0 ... Dense_{L-1}``; image input (N, H, W, C) is flattened first.

    Example:
        >>> m = MLP((300, 100, 10))               # LeNet-300-100
        >>> from jaxprune.models import init_params
        >>> v = init_params(m, jax.random.PRNGKey(0), (1, 28, 28, 1))
        >>> m.apply(v, jnp.ones((2, 28, 28, 1))).shape
        (2, 10)
    """

    features: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if len(self.features) == 0:
            raise PruningError("MLP: features must list at least the output width, got ()")
        x = flatten_examples(x)
        for width in self.features[:-1]:
            dense = nn.Dense(int(width))
            x = sow_activation(dense, nn.relu(dense(x)))
        return nn.Dense(int(self.features[-1]))(x)


def tutorial_mlp(num_classes: int = 10) -> MLP:
    """The 784-128-10 MLP of the JAX/flax tutorials (101,770 parameters on 28x28 input).

    Example:
        >>> tutorial_mlp().features
        (128, 10)
    """
    return MLP((128, int(num_classes)))


def lenet300(num_classes: int = 10) -> MLP:
    """LeNet-300-100 (LeCun et al. 1998; Han et al. 2015): 266,610 parameters on 28x28 input.

    Example:
        >>> lenet300().features
        (300, 100, 10)
    """
    return MLP((300, 100, int(num_classes)))


class LeNet5(nn.Module):
    """LeNet-5: conv 6@5x5 'SAME' -> max-pool -> conv 16@5x5 -> max-pool -> Dense 120 -> 84 -> classes.

    The first conv pads 'SAME' (a 28x28 MNIST image plays the role of the paper's padded 32x32 input),
    so it also runs on 8x8 digits. ``conv2_padding=None`` picks 'VALID' (the classic 5x5x16 = 400
    features on 28x28, 61,706 parameters) when the pooled map is at least 5 wide, else 'SAME'.

    Example:
        >>> from jaxprune.models import init_params
        >>> v = init_params(LeNet5(10), jax.random.PRNGKey(0), (1, 8, 8, 1))
        >>> LeNet5(10).apply(v, jnp.ones((3, 8, 8, 1))).shape
        (3, 10)
    """

    num_classes: int = 10
    conv2_padding: str | None = None
    # Widths default to the classic net; smaller ones describe a physically shrunk copy
    # (jaxprune.shrink). Parameter names do not depend on them.
    channels: Sequence[int] = (6, 16)
    hidden: Sequence[int] = (120, 84)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _as_image(x, "LeNet5")
        if len(self.channels) != 2 or len(self.hidden) != 2:
            raise PruningError(f"LeNet5: channels and hidden need 2 widths each, got "
                               f"{tuple(self.channels)} and {tuple(self.hidden)}")
        conv = nn.Conv(int(self.channels[0]), (5, 5), padding="SAME")
        x = sow_activation(conv, nn.relu(conv(x)))
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        padding = self.conv2_padding or ("VALID" if min(x.shape[1:3]) >= 5 else "SAME")
        conv = nn.Conv(int(self.channels[1]), (5, 5), padding=padding)
        x = sow_activation(conv, nn.relu(conv(x)))
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = flatten_examples(x)
        for width in self.hidden:
            dense = nn.Dense(int(width))
            x = sow_activation(dense, nn.relu(dense(x)))
        return nn.Dense(int(self.num_classes))(x)


class SmallCNN(nn.Module):
    """Conv 32@3x3 -> pool -> conv 64@3x3 -> pool -> Dense 128 -> classes (the flax MNIST example CNN).

    Example:
        >>> from jaxprune.models import init_params
        >>> v = init_params(SmallCNN(10), jax.random.PRNGKey(0), (1, 28, 28, 1))
        >>> SmallCNN(10).apply(v, jnp.ones((2, 28, 28, 1))).shape
        (2, 10)
    """

    num_classes: int = 10
    channels: Sequence[int] = (32, 64)
    hidden: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _as_image(x, "SmallCNN")
        for c in self.channels:
            conv = nn.Conv(int(c), (3, 3), padding="SAME")
            x = sow_activation(conv, nn.relu(conv(x)))
            x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = flatten_examples(x)
        dense = nn.Dense(int(self.hidden))
        x = sow_activation(dense, nn.relu(dense(x)))
        return nn.Dense(int(self.num_classes))(x)


def _as_image(x: jax.Array, model: str) -> jax.Array:
    """Accept (N, H, W, C) images, or (N, H, W) grey images (a channel axis is added)."""
    if x.ndim == 3:
        return x[..., None]
    if x.ndim != 4:
        raise PruningError(f"{model}: expected input of shape (N, H, W, C) or (N, H, W), got {x.shape}")
    return x
