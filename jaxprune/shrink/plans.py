"""Dependency plans: which layers own removable units, and which layers must follow a removal.

Removing a unit touches more than its own layer. Like Torch-Pruning's dependency graph, a plan lists,
for every prunable *producer*, the per-channel layers that follow it (BatchNorm) and the *consumer*
whose input axis must shrink with it. Our plans are written per architecture instead of traced: each
supported linen class gets a small function that reads its config and returns the plan, and anything
else is refused (a wrong guess would silently build a wrong model).
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import jax
import numpy as np
from flax import linen as nn

from jaxprune.errors import PruningError
from jaxprune.models.linen import MLP, LeNet5, SmallCNN
from jaxprune.models.resnet import ResNet20

__all__ = ["Edge", "Plan", "plan_for", "SUPPORTED", "layer_params", "resolve_units"]


class Edge(NamedTuple):
    """One removable-unit layer and the layers that change with it.

    ``kind`` says how the consumer's input axis maps onto the producer's units: ``'dense'`` (kernel
    rows), ``'conv'`` (the HWIO kernel's input-channel axis) or ``'flatten'`` (Dense rows of a
    flattened (H, W, C) map: row ``p * C + c`` belongs to channel ``c``). ``fold`` is where a mean
    replacement correction goes when the consumer has no bias (a BatchNorm after it), else ``''``.
    """

    layer: str
    norms: tuple[str, ...]
    consumer: str
    kind: str
    fold: str = ""


class Plan(NamedTuple):
    """Edges, the layers that may never shrink (with the reason), and a rebuild from new widths."""

    model: str
    edges: tuple[Edge, ...]
    fixed: Mapping[str, str]
    rebuild: Callable[[Mapping[str, int]], nn.Module]


_OUTPUT = "is the output layer (its units are the classes); output layers are never shrunk"


def _mlp(model: MLP) -> Plan:
    n = len(model.features)
    if n == 0:
        raise PruningError("shrink: MLP has no layers (features=())")
    dense = [f"Dense_{i}" for i in range(n)]
    edges = tuple(Edge(dense[i], (), dense[i + 1], "dense") for i in range(n - 1))

    def rebuild(w: Mapping[str, int]) -> nn.Module:
        return MLP((*(w[d] for d in dense[:-1]), int(model.features[-1])))

    return Plan("MLP", edges, {dense[-1]: _OUTPUT}, rebuild)


def _lenet5(model: LeNet5) -> Plan:
    edges = (Edge("Conv_0", (), "Conv_1", "conv"), Edge("Conv_1", (), "Dense_0", "flatten"),
             Edge("Dense_0", (), "Dense_1", "dense"), Edge("Dense_1", (), "Dense_2", "dense"))

    def rebuild(w: Mapping[str, int]) -> nn.Module:
        return model.clone(channels=(w["Conv_0"], w["Conv_1"]), hidden=(w["Dense_0"], w["Dense_1"]),
                           parent=None)

    return Plan("LeNet5", edges, {"Dense_2": _OUTPUT}, rebuild)


def _small_cnn(model: SmallCNN) -> Plan:
    convs = [f"Conv_{i}" for i in range(len(model.channels))]
    edges = [Edge(c, (), nxt, "conv") for c, nxt in zip(convs, convs[1:])]
    if convs:
        edges.append(Edge(convs[-1], (), "Dense_0", "flatten"))
    edges.append(Edge("Dense_0", (), "Dense_1", "dense"))

    def rebuild(w: Mapping[str, int]) -> nn.Module:
        return model.clone(channels=tuple(w[c] for c in convs), hidden=w["Dense_0"], parent=None)

    return Plan("SmallCNN", tuple(edges), {"Dense_1": _OUTPUT}, rebuild)


def _resnet20(model: ResNet20) -> Plan:
    # A residual add ties the channels of every conv that writes into the stream (the stem, each
    # block's second conv, the projection shortcuts) to each other: removing one means removing it
    # from all of them at once. We keep the stream's width and shrink only each block's inner conv,
    # whose output goes nowhere but its own BatchNorm and the block's second conv.
    n = len(model.stage_channels) * model.blocks_per_stage
    blocks = [f"BasicBlock_{i}" for i in range(n)]
    edges = tuple(Edge(f"{b}/Conv_0", (f"{b}/BatchNorm_0",), f"{b}/Conv_1", "conv", f"{b}/BatchNorm_1")
                  for b in blocks)
    stream = ("feeds the residual stream (its channels are coupled by the residual add to every "
              "other layer on the stream); only a block's inner conv 'BasicBlock_i/Conv_0' can shrink")
    fixed = {"Conv_0": stream, "Dense_0": _OUTPUT}
    for b in blocks:
        fixed.update({f"{b}/Conv_1": stream, f"{b}/shortcut_conv": stream})

    def rebuild(w: Mapping[str, int]) -> nn.Module:
        return model.clone(block_channels=tuple(w[f"{b}/Conv_0"] for b in blocks), parent=None)

    return Plan("ResNet20", edges, fixed, rebuild)


SUPPORTED: dict[type, Callable[..., Plan]] = {MLP: _mlp, LeNet5: _lenet5, SmallCNN: _small_cnn,
                                              ResNet20: _resnet20}
"""Linen classes :func:`~jaxprune.shrink.shrink` knows the producer -> consumer graph of."""


def plan_for(model: nn.Module) -> Plan:
    """The dependency plan of a supported model; a PruningError naming the module otherwise.

    Example:
        >>> [e.consumer for e in plan_for(MLP((8, 4, 2))).edges]
        ['Dense_1', 'Dense_2']
    """
    # Exact type: a subclass may rewire its layers, and a plan that does not match the graph would
    # build a model that runs but computes something else.
    factory = SUPPORTED.get(type(model))
    if factory is None:
        names = ", ".join(c.__name__ for c in SUPPORTED)
        raise PruningError(f"shrink: unsupported architecture: module {type(model).__name__!r} has no "
                           f"dependency plan (supported: {names}); its layers' producer -> consumer "
                           "links are unknown, so its units cannot be removed safely")
    return factory(model)


def layer_params(params: Mapping, layer: str, *, missing_ok: bool = False) -> Mapping | None:
    """The dict of ``layer`` ('BasicBlock_0/Conv_0') inside a linen params (or variables) tree.

    A layer not in the tree raises :class:`PruningError` naming it, or gives ``None`` when
    ``missing_ok`` (a layer without ``batch_stats``, say). The one lookup of layers by name in shrink.

    >>> layer_params({'Dense_0': {'kernel': 1}}, 'Dense_0'), layer_params({}, 'Dense_0', missing_ok=True)
    ({'kernel': 1}, None)
    """
    node = params
    for name in layer.split("/"):
        if not isinstance(node, Mapping) or name not in node:
            if missing_ok:
                return None
            raise PruningError(f"shrink: layer {layer!r} not found in the params tree")
        node = node[name]
    return node


def resolve_units(plan: Plan, params: Mapping, unit_masks: Mapping) -> dict[str, np.ndarray]:
    """Checked keep-vectors for every producer of ``plan`` (layers not given keep all units).

    A layer in ``unit_masks`` that is fixed (output, residual stream) must keep every unit; a layer
    that is neither a producer nor fixed, a wrong length, a traced array or an emptied layer raise.
    """
    if not isinstance(unit_masks, Mapping):
        raise PruningError(f"shrink: unit_masks must map layer name -> (units,) bool, got "
                           f"{type(unit_masks).__name__}")
    widths = {e.layer: int(np.shape(layer_params(params, e.layer)["kernel"])[-1]) for e in plan.edges}
    out = {layer: np.ones(n, bool) for layer, n in widths.items()}
    for layer, keep in unit_masks.items():
        if isinstance(keep, jax.core.Tracer):
            raise PruningError(f"shrink: unit mask of layer {layer!r} is traced; shrinking changes "
                               "shapes, so it runs outside jit on concrete masks")
        keep = np.asarray(keep)
        if keep.dtype != np.bool_ or keep.ndim != 1:
            raise PruningError(f"shrink: unit mask of layer {layer!r} must be a 1-D bool vector, got "
                               f"dtype {keep.dtype} shape {keep.shape}")
        if layer in plan.fixed:
            if not keep.all():
                raise PruningError(f"shrink: {plan.model} layer {layer!r} cannot lose units: it "
                                   f"{plan.fixed[layer]}")
            continue
        if layer not in widths:
            raise PruningError(f"shrink: {plan.model} has no prunable layer {layer!r}; prunable: "
                               f"{sorted(widths)}")
        if keep.shape[0] != widths[layer]:
            raise PruningError(f"shrink: unit mask of layer {layer!r} has {keep.shape[0]} entries, "
                               f"the layer has {widths[layer]} units")
        if not keep.any():
            raise PruningError(f"shrink: unit mask would empty layer {layer!r}; keep at least one unit")
        out[layer] = keep
    return out
