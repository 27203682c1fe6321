"""NNX versions of the classifiers.

``NnxMLP``, ``NnxLeNet5`` and ``NnxSmallCNN`` are native ``flax.nnx`` modules. Their submodules are
deliberately named like linen's auto-names (``Dense_0``, ``Conv_1``...), so ``nnx.state(model,
nnx.Param)`` has the same leaf paths as the linen ``params`` tree (``Dense_0/kernel``) and one path
selector works for both. ResNet-20 (BatchNorm, ``train`` flag) goes through the linen->NNX bridge:
:func:`to_nnx` wraps any linen model with ``flax.nnx.bridge.ToNNX``.

Hidden post-ReLU outputs are sown as ``nnx.Intermediate`` on the producing layer, but only inside
``nnx.capture(model, nnx.Intermediate)`` (see :func:`~jaxprune.models.sow_activation_nnx`).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from jaxprune.errors import PruningError
from jaxprune.models.common import flatten_examples, sow_activation_nnx, train_kwargs


class NnxMLP(nnx.Module):
    """NNX fully connected ReLU network: ``in_features`` -> ``features[0]`` -> ... -> ``features[-1]``.

    Example:
        >>> m = NnxMLP(784, (128, 10), rngs=nnx.Rngs(0))
        >>> m(jnp.ones((2, 28, 28, 1))).shape
        (2, 10)
        >>> m.Dense_0.kernel.shape
        (784, 128)
    """

    def __init__(self, in_features: int, features: Sequence[int], *, rngs: nnx.Rngs):
        if len(features) == 0:
            raise PruningError("NnxMLP: features must list at least the output width, got ()")
        self.num_layers = len(features)
        widths = (int(in_features), *(int(f) for f in features))
        for i in range(len(features)):
            # setattr keeps linen's names (Dense_i) so leaf paths match the linen params tree.
            setattr(self, f"Dense_{i}", nnx.Linear(widths[i], widths[i + 1], rngs=rngs))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = flatten_examples(x)
        for i in range(self.num_layers - 1):
            layer = getattr(self, f"Dense_{i}")
            x = sow_activation_nnx(layer, nnx.relu(layer(x)))
        return getattr(self, f"Dense_{self.num_layers - 1}")(x)


class NnxLeNet5(nnx.Module):
    """NNX LeNet-5 for (N, H, W, C) images; same layers and names as :class:`~jaxprune.models.LeNet5`.

    Example:
        >>> m = NnxLeNet5(10, input_shape=(8, 8, 1), rngs=nnx.Rngs(0))
        >>> m(jnp.ones((3, 8, 8, 1))).shape
        (3, 10)
    """

    def __init__(self, num_classes: int = 10, *, input_shape: Sequence[int] = (28, 28, 1),
                 rngs: nnx.Rngs):
        h, w, c = (int(d) for d in input_shape)
        self.Conv_0 = nnx.Conv(c, 6, (5, 5), padding="SAME", rngs=rngs)
        h, w = -(-h // 2), -(-w // 2)
        # Same rule as the linen model: classic 'VALID' when the pooled map fits a 5x5 kernel.
        self.conv2_padding = "VALID" if min(h, w) >= 5 else "SAME"
        self.Conv_1 = nnx.Conv(6, 16, (5, 5), padding=self.conv2_padding, rngs=rngs)
        if self.conv2_padding == "VALID":
            h, w = h - 4, w - 4
        h, w = -(-h // 2), -(-w // 2)
        self.Dense_0 = nnx.Linear(h * w * 16, 120, rngs=rngs)
        self.Dense_1 = nnx.Linear(120, 84, rngs=rngs)
        self.Dense_2 = nnx.Linear(84, int(num_classes), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv in (self.Conv_0, self.Conv_1):
            x = sow_activation_nnx(conv, nnx.relu(conv(x)))
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = flatten_examples(x)
        for dense in (self.Dense_0, self.Dense_1):
            x = sow_activation_nnx(dense, nnx.relu(dense(x)))
        return self.Dense_2(x)


class NnxSmallCNN(nnx.Module):
    """NNX twin of :class:`~jaxprune.models.SmallCNN` (conv 32-64 + Dense 128).

    Example:
        >>> m = NnxSmallCNN(10, input_shape=(28, 28, 1), rngs=nnx.Rngs(0))
        >>> m(jnp.ones((2, 28, 28, 1))).shape
        (2, 10)
    """

    def __init__(self, num_classes: int = 10, *, input_shape: Sequence[int] = (28, 28, 1),
                 channels: Sequence[int] = (32, 64), hidden: int = 128, rngs: nnx.Rngs):
        h, w, c = (int(d) for d in input_shape)
        self.num_convs = len(channels)
        for i, out in enumerate(channels):
            setattr(self, f"Conv_{i}", nnx.Conv(c, int(out), (3, 3), padding="SAME", rngs=rngs))
            c, h, w = int(out), -(-h // 2), -(-w // 2)
        self.Dense_0 = nnx.Linear(h * w * c, int(hidden), rngs=rngs)
        self.Dense_1 = nnx.Linear(int(hidden), int(num_classes), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_convs):
            conv = getattr(self, f"Conv_{i}")
            x = sow_activation_nnx(conv, nnx.relu(conv(x)))
            x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = flatten_examples(x)
        x = sow_activation_nnx(self.Dense_0, nnx.relu(self.Dense_0(x)))
        return self.Dense_1(x)


def to_nnx(model: nn.Module, input_shape: Sequence[int], *, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
    """Wrap a linen model as an NNX module (``flax.nnx.bridge.ToNNX``) and initialise it.

    ``input_shape`` includes the batch axis; ``kwargs`` go to the init call (models with a ``train``
    flag are initialised with ``train=False``). Call the result like the linen model, e.g.
    ``m(x, train=True, mutable=['batch_stats'])`` to update BatchNorm statistics.

    Example (``to_nnx(ResNet20(10), (1, 32, 32, 3), rngs=...)`` works the same way):
        >>> from jaxprune.models import MLP
        >>> m = to_nnx(MLP((8, 2)), (1, 3), rngs=nnx.Rngs(0))
        >>> m(jnp.ones((5, 3))).shape
        (5, 2)
    """
    if not isinstance(model, nn.Module):
        raise PruningError(f"to_nnx: model must be a flax.linen.Module, got {type(model).__name__}")
    kwargs = {**train_kwargs(model), **kwargs}
    x = jnp.zeros(tuple(int(d) for d in input_shape), jnp.float32)
    return nnx.bridge.ToNNX(model, rngs=rngs).lazy_init(x, **kwargs)
