"""Structured pruning that really shrinks the model: remove pruned units, rebuild a smaller model.

Pipeline: element masks (``topk_masks(..., structure=Neurons(outputs=...))``) or unit scores -> :func:`unit_masks`
/ :func:`unit_masks_from_scores` -> :func:`shrink` -> a smaller linen model and variables; measure
with :func:`flops`, :func:`macs`, :func:`param_count`, :func:`param_bytes`, :func:`latency_ms`.
:func:`shrink` follows a hand-written plan (MLP, LeNet5, SmallCNN, ResNet20 with the inner conv of
each block only); any other model, yours included, is shrunk through its traced graph
(``jaxprune.prune_structured``, ``docs/structure.md``). The cost measures take any linen model (full
variables or bare params) or nnx module; ``macs`` counts every matmul of the traced forward,
attention's QKᵀ and AV included. :func:`fast_lowerings` (:func:`fast_convs` + :func:`fast_attention`)
serves a shrunk model faster on CPU. See ``docs/shrink.md``.
"""

from jaxprune.shrink.cost import flops, latency_ms, macs, param_bytes, param_count
from jaxprune.shrink.fastattn import fast_attention, heads_first_attention, with_fast_attention
from jaxprune.shrink.fastconv import conv_general_dilated, fast_convs, with_fast_convs
from jaxprune.shrink.lowering import fast_lowerings
from jaxprune.shrink.plans import Edge, Plan, plan_for
from jaxprune.shrink.surgery import shrink, unit_means
from jaxprune.shrink.units import removal_masks, unit_masks, unit_masks_from_scores

__all__ = [
    "Edge",
    "Plan",
    "conv_general_dilated",
    "fast_attention",
    "fast_convs",
    "fast_lowerings",
    "flops",
    "heads_first_attention",
    "latency_ms",
    "macs",
    "param_bytes",
    "param_count",
    "plan_for",
    "removal_masks",
    "shrink",
    "unit_masks",
    "unit_masks_from_scores",
    "unit_means",
    "with_fast_attention",
    "with_fast_convs",
]
