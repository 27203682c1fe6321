"""Reference classifiers for pruning experiments (flax linen, with NNX twins), and the model registry.

Linen: :class:`MLP` (``tutorial_mlp`` 784-128-10, ``lenet300``), :class:`LeNet5`, :class:`SmallCNN`,
:class:`ResNet20`, :class:`ResNet18`, :class:`MobileNetV2`, :class:`ViT` (these three with native NNX twins
:class:`NnxResNet18`, :class:`NnxMobileNetV2`, :class:`NnxViT`); :func:`init_params`. NNX: :class:`NnxMLP`, :class:`NnxLeNet5`, :class:`NnxSmallCNN`
(native) and :func:`to_nnx` (bridge, used for ResNet-20). Registry (docs/models.md): :data:`MODELS`
of :class:`ModelEntry`, :func:`register_model`, :func:`get_model`, :func:`get_nnx_model`; shrink plans
(:class:`Edge`, :class:`Plan`) in :mod:`jaxprune.models.plans`.
"""

from jaxprune.models.common import (
    ACTIVATION_NAME,
    ACTIVATIONS,
    flatten_examples,
    init_params,
    sow_activation,
    sow_activation_nnx,
    takes_train,
    train_kwargs,
)
from jaxprune.models.linen import MLP, LeNet5, SmallCNN, lenet300, tutorial_mlp
from jaxprune.models.nnx_models import NnxLeNet5, NnxMLP, NnxSmallCNN, to_nnx
from jaxprune.models.plans import Edge, Plan
from jaxprune.models.registry import (INPUT_KINDS, MODELS, ModelEntry, get_model, get_nnx_model,
                                      groupable_models, model_entry, register_model, registered_plan)
from jaxprune.models.mobilenet import MobileNetV2, NnxMobileNetV2
from jaxprune.models.resnet import BasicBlock, ResNet20
from jaxprune.models.resnet18 import NnxResNet18, ResNet18
from jaxprune.models.vit import NnxViT, ViT

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_NAME",
    "INPUT_KINDS",
    "MLP",
    "MODELS",
    "BasicBlock",
    "Edge",
    "LeNet5",
    "MobileNetV2",
    "ModelEntry",
    "NnxLeNet5",
    "NnxMLP",
    "NnxMobileNetV2",
    "NnxResNet18",
    "NnxViT",
    "NnxSmallCNN",
    "Plan",
    "ResNet18",
    "ResNet20",
    "SmallCNN",
    "ViT",
    "flatten_examples",
    "get_model",
    "get_nnx_model",
    "groupable_models",
    "init_params",
    "lenet300",
    "model_entry",
    "register_model",
    "registered_plan",
    "sow_activation",
    "sow_activation_nnx",
    "takes_train",
    "to_nnx",
    "train_kwargs",
    "tutorial_mlp",
]
