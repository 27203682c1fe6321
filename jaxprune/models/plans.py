"""Dependency plans of the zoo's architectures: which layers own removable units, which must follow.

Removing a unit touches more than its own layer. Like Torch-Pruning's dependency graph, a plan lists,
for every prunable *producer*, the per-channel layers that follow it (BatchNorm) and the *consumer*
whose input axis must shrink with it. Plans are written per architecture, next to the models, and
reach :func:`jaxprune.shrink.shrink` through the model registry (``register_model(...,
shrink_plan=...)``); a model without one is refused (a wrong guess would silently build a wrong
model).
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

from flax import linen as nn

from jaxprune.errors import PruningError
from jaxprune.models.linen import MLP, LeNet5, SmallCNN
from jaxprune.models.resnet import ResNet20

__all__ = ["Edge", "Plan", "OUTPUT_LAYER", "mlp_plan", "lenet5_plan", "small_cnn_plan", "resnet20_plan"]


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


OUTPUT_LAYER = "is the output layer (its units are the classes); output layers are never shrunk"
"""The reason a plan gives for a model's output layer in :attr:`Plan.fixed`."""


def mlp_plan(model: MLP) -> Plan:
    """Every hidden Dense layer feeds the next one's kernel rows; the last layer is the output.

    >>> [(e.layer, e.consumer) for e in mlp_plan(MLP((8, 4, 2))).edges]
    [('Dense_0', 'Dense_1'), ('Dense_1', 'Dense_2')]
    """
    n = len(model.features)
    if n == 0:
        raise PruningError("shrink: MLP has no layers (features=())")
    dense = [f"Dense_{i}" for i in range(n)]
    edges = tuple(Edge(dense[i], (), dense[i + 1], "dense") for i in range(n - 1))

    def rebuild(w: Mapping[str, int]) -> nn.Module:
        return MLP((*(w[d] for d in dense[:-1]), int(model.features[-1])))

    return Plan("MLP", edges, {dense[-1]: OUTPUT_LAYER}, rebuild)


def lenet5_plan(model: LeNet5) -> Plan:
    """conv -> conv -> flatten -> dense -> dense -> output.

    >>> [e.kind for e in lenet5_plan(LeNet5(10)).edges]
    ['conv', 'flatten', 'dense', 'dense']
    """
    edges = (Edge("Conv_0", (), "Conv_1", "conv"), Edge("Conv_1", (), "Dense_0", "flatten"),
             Edge("Dense_0", (), "Dense_1", "dense"), Edge("Dense_1", (), "Dense_2", "dense"))

    def rebuild(w: Mapping[str, int]) -> nn.Module:
        return model.clone(channels=(w["Conv_0"], w["Conv_1"]), hidden=(w["Dense_0"], w["Dense_1"]),
                           parent=None)

    return Plan("LeNet5", edges, {"Dense_2": OUTPUT_LAYER}, rebuild)


def small_cnn_plan(model: SmallCNN) -> Plan:
    """Each conv feeds the next; the last conv's flattened map feeds the hidden Dense layer.

    >>> [e.consumer for e in small_cnn_plan(SmallCNN(10)).edges]
    ['Conv_1', 'Dense_0', 'Dense_1']
    """
    convs = [f"Conv_{i}" for i in range(len(model.channels))]
    edges = [Edge(c, (), nxt, "conv") for c, nxt in zip(convs, convs[1:])]
    if convs:
        edges.append(Edge(convs[-1], (), "Dense_0", "flatten"))
    edges.append(Edge("Dense_0", (), "Dense_1", "dense"))

    def rebuild(w: Mapping[str, int]) -> nn.Module:
        return model.clone(channels=tuple(w[c] for c in convs), hidden=w["Dense_0"], parent=None)

    return Plan("SmallCNN", tuple(edges), {"Dense_1": OUTPUT_LAYER}, rebuild)


def resnet20_plan(model: ResNet20) -> Plan:
    """Only each block's inner conv shrinks (with its BatchNorm); the residual stream keeps its width.

    >>> plan = resnet20_plan(ResNet20(10))
    >>> len(plan.edges), plan.edges[0].consumer, 'Conv_0' in plan.fixed
    (9, 'BasicBlock_0/Conv_1', True)
    """
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
    fixed = {"Conv_0": stream, "Dense_0": OUTPUT_LAYER}
    for b in blocks:
        fixed.update({f"{b}/Conv_1": stream, f"{b}/shortcut_conv": stream})

    def rebuild(w: Mapping[str, int]) -> nn.Module:
        return model.clone(block_channels=tuple(w[f"{b}/Conv_0"] for b in blocks), parent=None)

    return Plan("ResNet20", edges, fixed, rebuild)
