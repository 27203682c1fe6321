"""The model registry: one entry per architecture, read by everything that takes a model name.

An entry (:class:`ModelEntry`) holds the linen constructor ``(num_classes, **kw) -> nn.Module``, its
nnx twin ``(num_classes, input_shape, *, rngs, **kw) -> nnx.Module`` (by default the linen model
through ``flax.nnx.bridge``), the shrink plan (``None``: units cannot be removed physically), whether
the vmapped sweep may train its runs as one group, and its input kind (``'image'``: (H, W, C);
``'flat'``: any example shape, flattened; ``'tokens'``: (context,) integer ids, for ``kind='lm'``).
The harness (``model=`` of a config), ``jaxprune.shrink.plan_for``, the sweep's grouping rule and
config validation all read it, so a new architecture is one :func:`register_model` call
(docs/models.md); ``tests/test_models.py`` runs the same contract over every entry.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Sequence

from flax import linen as nn
from flax import nnx

from jaxprune.errors import PruningError
from jaxprune.models.gpt import NnxGPT, gpt_nano
from jaxprune.models.linen import MLP, LeNet5, SmallCNN, lenet300, tutorial_mlp
from jaxprune.models.nnx_models import NnxLeNet5, NnxMLP, NnxSmallCNN, to_nnx
from jaxprune.models.plans import Plan, lenet5_plan, mlp_plan, resnet20_plan, small_cnn_plan
from jaxprune.models.mobilenet import MobileNetV2, NnxMobileNetV2
from jaxprune.models.resnet import ResNet20
from jaxprune.models.resnet18 import NnxResNet18, ResNet18
from jaxprune.models.vit import NnxViT, ViT

__all__ = ["INPUT_KINDS", "ModelEntry", "MODELS", "register_model", "model_entry", "get_model",
           "get_nnx_model", "registered_plan", "groupable_models"]

INPUT_KINDS = ("image", "flat", "tokens")
"""What one example of a model is: an (H, W, C) image, any shape (flattened), or token ids."""


class ModelEntry(NamedTuple):
    """One registered architecture (see the module docstring for each field's contract).

    ``module`` is the linen class ``linen`` builds: shrink plans are looked up by it, exactly (a
    subclass may rewire its layers, and a plan that does not match the graph would build a model that
    runs but computes something else).
    """

    name: str
    linen: Callable[..., nn.Module]
    nnx: Callable[..., nnx.Module]
    shrink_plan: Optional[Callable[[Any], Plan]]
    groupable: bool
    inputs: str
    module: type


MODELS: dict[str, ModelEntry] = {}
"""``name -> ModelEntry``; ``model=`` of a config is a key of it."""


def _bridge(linen: Callable[..., nn.Module]) -> Callable[..., nnx.Module]:
    def build(num_classes: int, input_shape: Sequence[int], *, rngs: nnx.Rngs, **kw: Any) -> nnx.Module:
        return to_nnx(linen(num_classes, **kw), (1, *input_shape), rngs=rngs)

    return build


def register_model(name: str, linen: Callable[..., nn.Module], *,
                   nnx: Optional[Callable[..., nnx.Module]] = None,
                   shrink_plan: Optional[Callable[[Any], Plan]] = None, groupable: bool = False,
                   inputs: str = "image", replace: bool = False) -> ModelEntry:
    """Adds an architecture as ``model=name``; returns its entry.

    ``linen(num_classes, **kw)`` must build the model from the class count alone (the harness passes
    nothing else). ``nnx`` defaults to the linen model through :func:`~jaxprune.models.to_nnx`.
    ``groupable=True`` says the model's grouped training was checked bit-identical to one-by-one runs
    (the contract test runs it grouped). Registering a taken name is an error unless ``replace=True``.

    >>> class Wide(nn.Module):
    ...     num_classes: int = 10
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))
    >>> entry = register_model("doc_wide", Wide, inputs="flat")
    >>> entry.module is Wide, entry.shrink_plan, get_model("doc_wide", 3).num_classes
    (True, None, 3)
    >>> del MODELS["doc_wide"]  # (the example leaves the registry as it was)
    """
    if not isinstance(name, str) or not name:
        raise PruningError(f"register_model: name must be a non-empty string, got {name!r}")
    if name in MODELS and not replace:
        raise PruningError(f"register_model: model {name!r} is already registered (pass replace=True "
                           "to replace it)")
    if inputs not in INPUT_KINDS:
        raise PruningError(f"register_model({name!r}): inputs must be one of {INPUT_KINDS}, got {inputs!r}")
    if groupable and inputs == "tokens":
        raise PruningError(f"register_model({name!r}): the vmapped sweep groups classifiers only; a "
                           "tokens model cannot be groupable")
    for what, fn in (("linen", linen), ("nnx", nnx), ("shrink_plan", shrink_plan)):
        if fn is not None and not callable(fn):
            raise PruningError(f"register_model({name!r}): {what} must be callable, got {type(fn).__name__}")
    try:
        built = linen(10)
    except Exception as err:  # any failure of user code here is a registration error
        raise PruningError(f"register_model({name!r}): linen(num_classes) must build the model from "
                           f"the class count alone; linen(10) raised {type(err).__name__}: {err}") from err
    if not isinstance(built, nn.Module):
        raise PruningError(f"register_model({name!r}): linen(10) must return a flax.linen.Module, got "
                           f"{type(built).__name__}")
    module = type(built)
    if shrink_plan is not None:
        for other in MODELS.values():
            if other.name != name and other.module is module and other.shrink_plan not in (None, shrink_plan):
                raise PruningError(f"register_model({name!r}): {module.__name__} already has the shrink "
                                   f"plan of model {other.name!r}; one class, one plan")
    entry = ModelEntry(name, linen, _bridge(linen) if nnx is None else nnx, shrink_plan, bool(groupable),
                       inputs, module)
    MODELS[name] = entry
    return entry


def model_entry(name: str) -> ModelEntry:
    """The entry of ``name`` (a :class:`PruningError` listing the known names otherwise).

    >>> model_entry('resnet20').inputs, model_entry('lenet300').groupable
    ('image', True)
    """
    if not isinstance(name, str) or name not in MODELS:
        raise PruningError(f"unknown model name {name!r}; known: {sorted(MODELS)}")
    return MODELS[name]


def get_model(name: str, num_classes: int, **kw: Any) -> nn.Module:
    """Build a registered linen model.

    Example:
        >>> get_model('lenet300', 10).features
        (300, 100, 10)
        >>> get_model('mlp', 10, hidden=(64,)).features
        (64, 10)
    """
    entry = model_entry(name)
    try:
        return entry.linen(num_classes, **kw)
    except TypeError as err:
        raise PruningError(f"get_model: bad keyword arguments for model {name!r}: {err}") from err


def get_nnx_model(name: str, num_classes: int, input_shape: Sequence[int], *, rngs: nnx.Rngs,
                  **kw: Any) -> nnx.Module:
    """Build a registered model as NNX; ``input_shape`` is one example's shape, e.g. (28, 28, 1).

    MLPs, LeNet-5, the small CNN and the GPT are native NNX modules; ResNet-20 is the linen model
    wrapped by :func:`to_nnx` (``flax.nnx.bridge``), as is every model registered without a twin.

    Example:
        >>> m = get_nnx_model('tutorial_mlp', 10, (28, 28, 1), rngs=nnx.Rngs(0))
        >>> type(m).__name__, m.Dense_1.kernel.shape
        ('NnxMLP', (128, 10))
    """
    entry = model_entry(name)
    shape = tuple(int(d) for d in input_shape)
    want = {"image": 3, "tokens": 1}.get(entry.inputs)
    if want is not None and len(shape) != want:
        raise PruningError(f"get_nnx_model: {name!r} needs input_shape "
                           f"{'(H, W, C)' if want == 3 else '(context,)'}, got {shape}")
    return entry.nnx(num_classes, shape, rngs=rngs, **kw)


def registered_plan(model: Any) -> Optional[Callable[[Any], Plan]]:
    """The shrink plan registered for ``model``'s exact linen class, or ``None``.

    >>> registered_plan(MLP((4, 2))) is mlp_plan, registered_plan(gpt_nano())
    (True, None)
    """
    return next((e.shrink_plan for e in MODELS.values()
                 if e.module is type(model) and e.shrink_plan is not None), None)


def groupable_models() -> tuple[str, ...]:
    """Names of the models the vmapped sweep may train as one group.

    >>> groupable_models()
    ('tutorial_mlp', 'lenet300', 'mlp')
    """
    return tuple(name for name, e in MODELS.items() if e.groupable)


RESNET18_W16 = (16, 32, 64, 128)
"""``stage_channels`` of ``model=resnet18_w16``."""


def _mlp(num_classes: int, hidden: Sequence[int] = (256, 256)) -> MLP:
    return MLP((*(int(h) for h in hidden), int(num_classes)))


def _nnx_mlp(linen: Callable[..., MLP]) -> Callable[..., nnx.Module]:
    def build(num_classes: int, input_shape: Sequence[int], *, rngs: nnx.Rngs, **kw: Any) -> nnx.Module:
        return NnxMLP(math.prod(input_shape), linen(num_classes, **kw).features, rngs=rngs)

    return build


def _nnx_lenet5(num_classes: int, input_shape: Sequence[int], *, rngs: nnx.Rngs, **kw: Any) -> nnx.Module:
    return NnxLeNet5(num_classes, input_shape=tuple(input_shape), rngs=rngs, **kw)


def _nnx_small_cnn(num_classes: int, input_shape: Sequence[int], *, rngs: nnx.Rngs, **kw: Any) -> nnx.Module:
    return NnxSmallCNN(num_classes, input_shape=tuple(input_shape), rngs=rngs, **kw)


def _nnx_gpt(vocab_size: int, input_shape: Sequence[int], *, rngs: nnx.Rngs, **kw: Any) -> nnx.Module:
    return NnxGPT(vocab_size, input_shape[0], rngs=rngs, **kw)


def _nnx_in_channels(cls: type) -> Callable[..., nnx.Module]:
    def build(num_classes: int, input_shape: Sequence[int], *, rngs: nnx.Rngs, **kw: Any) -> nnx.Module:
        return cls(num_classes, in_channels=int(input_shape[-1]), rngs=rngs, **kw)

    return build


def _resnet18_w16(num_classes: int, **kw: Any) -> ResNet18:
    return ResNet18(num_classes, **{"stage_channels": RESNET18_W16, **kw})


def _nnx_resnet18_w16(num_classes: int, input_shape: Sequence[int], *, rngs: nnx.Rngs,
                      **kw: Any) -> nnx.Module:
    return NnxResNet18(num_classes, in_channels=int(input_shape[-1]), rngs=rngs,
                       **{"stage_channels": RESNET18_W16, **kw})


def _nnx_vit(num_classes: int, input_shape: Sequence[int], *, rngs: nnx.Rngs, **kw: Any) -> nnx.Module:
    return NnxViT(num_classes, image=tuple(int(d) for d in input_shape), rngs=rngs, **kw)


# Grouped training is checked bit-identical to one-by-one runs for the MLPs only: for convs even the
# scanned step rounds differently (docs/vmapped.md).
for _name, _linen in (("tutorial_mlp", tutorial_mlp), ("lenet300", lenet300), ("mlp", _mlp)):
    register_model(_name, _linen, nnx=_nnx_mlp(_linen), shrink_plan=mlp_plan, groupable=True, inputs="flat")
register_model("lenet5", LeNet5, nnx=_nnx_lenet5, shrink_plan=lenet5_plan)
register_model("small_cnn", SmallCNN, nnx=_nnx_small_cnn, shrink_plan=small_cnn_plan)
register_model("resnet20", ResNet20, shrink_plan=resnet20_plan)
# No hand-written plan: `jaxprune run ... shrink=true` shrinks these through the traced graph
# (jaxprune.methods.traced); not groupable (convolutions and attention round differently grouped).
register_model("resnet18", ResNet18, nnx=_nnx_in_channels(NnxResNet18))
# The same ResNet-18 at a quarter of the width (16-32-64-128 channels, 0.70 M params): the structured
# sweep's ResNet-18, trainable on this 2-core box (full width: 27 min per Fashion-MNIST epoch).
register_model("resnet18_w16", _resnet18_w16, nnx=_nnx_resnet18_w16)
register_model("mobilenet_v2", MobileNetV2, nnx=_nnx_in_channels(NnxMobileNetV2))
register_model("vit", ViT, nnx=_nnx_vit)
# num_classes = vocabulary size; context=, num_layers=, width=, ...
register_model("gpt", gpt_nano, nnx=_nnx_gpt, inputs="tokens")

