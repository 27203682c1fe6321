"""Model registry: ``get_model(name, num_classes, **kw)`` for linen, ``get_nnx_model`` for NNX."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from flax import linen as nn
from flax import nnx

from jaxprune.errors import PruningError
from jaxprune.models.gpt import NnxGPT, gpt_nano
from jaxprune.models.linen import MLP, LeNet5, SmallCNN, lenet300, tutorial_mlp
from jaxprune.models.nnx_models import NnxLeNet5, NnxMLP, NnxSmallCNN, to_nnx
from jaxprune.models.resnet import ResNet20


def _mlp(num_classes: int, hidden: Sequence[int] = (256, 256)) -> MLP:
    return MLP((*(int(h) for h in hidden), int(num_classes)))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "tutorial_mlp": tutorial_mlp,
    "lenet300": lenet300,
    "mlp": _mlp,
    "lenet5": LeNet5,
    "small_cnn": SmallCNN,
    "resnet20": ResNet20,
    "gpt": gpt_nano,  # num_classes = vocabulary size; context=, num_layers=, width=, ...
}
"""Linen model factories ``(num_classes, **kw) -> nn.Module``; 'mlp' takes ``hidden=(256, 256)``."""


def get_model(name: str, num_classes: int, **kw: Any) -> nn.Module:
    """Build a registered linen model.

    Example:
        >>> get_model('lenet300', 10).features
        (300, 100, 10)
        >>> get_model('mlp', 10, hidden=(64,)).features
        (64, 10)
    """
    if name not in MODELS:
        raise PruningError(f"get_model: unknown model name {name!r}; known: {sorted(MODELS)}")
    try:
        return MODELS[name](num_classes, **kw)
    except TypeError as err:
        raise PruningError(f"get_model: bad keyword arguments for model {name!r}: {err}") from err


def get_nnx_model(name: str, num_classes: int, input_shape: Sequence[int], *, rngs: nnx.Rngs,
                  **kw: Any) -> nnx.Module:
    """Build a registered model as NNX; ``input_shape`` is one example's shape, e.g. (28, 28, 1).

    MLPs, LeNet-5 and the small CNN are native NNX modules; ResNet-20 is the linen model wrapped by
    :func:`to_nnx` (``flax.nnx.bridge``).

    Example:
        >>> m = get_nnx_model('tutorial_mlp', 10, (28, 28, 1), rngs=nnx.Rngs(0))
        >>> type(m).__name__, m.Dense_1.kernel.shape
        ('NnxMLP', (128, 10))
    """
    if name not in MODELS:
        raise PruningError(f"get_nnx_model: unknown model name {name!r}; known: {sorted(MODELS)}")
    shape = tuple(int(d) for d in input_shape)
    if name == "gpt":  # input_shape is (context,): one token sequence
        return NnxGPT(num_classes, shape[0], rngs=rngs, **kw)
    if name in ("tutorial_mlp", "lenet300", "mlp"):
        features = get_model(name, num_classes, **kw).features
        return NnxMLP(math.prod(shape), features, rngs=rngs)
    if len(shape) != 3:
        raise PruningError(f"get_nnx_model: {name!r} needs input_shape (H, W, C), got {shape}")
    if name == "lenet5":
        return NnxLeNet5(num_classes, input_shape=shape, rngs=rngs, **kw)
    if name == "small_cnn":
        return NnxSmallCNN(num_classes, input_shape=shape, rngs=rngs, **kw)
    return to_nnx(get_model(name, num_classes, **kw), (1, *shape), rngs=rngs)
