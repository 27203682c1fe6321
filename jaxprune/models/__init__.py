"""Reference classifiers for pruning experiments (flax linen, with NNX twins), and the model registry.

Linen: :class:`MLP` (``tutorial_mlp`` 784-128-10, ``lenet300``), :class:`LeNet5`, :class:`SmallCNN`,
:class:`ResNet20`; :func:`init_params`. NNX: :class:`NnxMLP`, :class:`NnxLeNet5`, :class:`NnxSmallCNN`
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
from jaxprune.models.resnet import BasicBlock, ResNet20

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_NAME",
    "INPUT_KINDS",
    "MLP",
    "MODELS",
    "BasicBlock",
    "Edge",
    "LeNet5",
    "ModelEntry",
    "NnxLeNet5",
    "NnxMLP",
    "NnxSmallCNN",
    "Plan",
    "ResNet20",
    "SmallCNN",
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
