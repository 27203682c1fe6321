"""Reference classifiers for pruning experiments (flax linen, with NNX twins).

Linen: :class:`MLP` (``tutorial_mlp`` 784-128-10, ``lenet300``), :class:`LeNet5`, :class:`SmallCNN`,
:class:`ResNet20`; registry :data:`MODELS` / :func:`get_model`; :func:`init_params`.
NNX: :class:`NnxMLP`, :class:`NnxLeNet5`, :class:`NnxSmallCNN` (native) and :func:`to_nnx` (bridge,
used for ResNet-20); :func:`get_nnx_model`.
"""

from jaxprune.models.common import (
    ACTIVATION_NAME,
    ACTIVATIONS,
    flatten_examples,
    init_params,
    sow_activation,
    sow_activation_nnx,
)
from jaxprune.models.linen import MLP, LeNet5, SmallCNN, lenet300, tutorial_mlp
from jaxprune.models.nnx_models import NnxLeNet5, NnxMLP, NnxSmallCNN, to_nnx
from jaxprune.models.registry import MODELS, get_model, get_nnx_model
from jaxprune.models.resnet import BasicBlock, ResNet20

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_NAME",
    "MLP",
    "MODELS",
    "BasicBlock",
    "LeNet5",
    "NnxLeNet5",
    "NnxMLP",
    "NnxSmallCNN",
    "ResNet20",
    "SmallCNN",
    "flatten_examples",
    "get_model",
    "get_nnx_model",
    "init_params",
    "lenet300",
    "sow_activation",
    "sow_activation_nnx",
    "to_nnx",
    "tutorial_mlp",
]
