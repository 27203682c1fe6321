"""Quantization that respects pruning masks, mixed precision, size accounting, sparse inference.

See docs/quantization.md for the formulas, the size formats and CPU latency numbers.
"""

from jaxprune.quant.precision import (
    LossScale,
    Policy,
    adjust_loss_scale,
    get_policy,
    grads_finite,
    init_loss_scale,
    scale_loss,
    unscale_grads,
)
from jaxprune.quant.quantize import (
    QuantizedArray,
    QuantizedTree,
    dequantize,
    fake_quant,
    fake_quant_tree,
    quantize,
)
from jaxprune.quant.size import FORMATS, format_size_report, size_report
from jaxprune.quant.sparse import sparse_matmul, sparse_mlp_apply, to_bcoo, to_bcsr

__all__ = [
    "FORMATS",
    "LossScale",
    "Policy",
    "QuantizedArray",
    "QuantizedTree",
    "adjust_loss_scale",
    "dequantize",
    "fake_quant",
    "fake_quant_tree",
    "format_size_report",
    "get_policy",
    "grads_finite",
    "init_loss_scale",
    "quantize",
    "scale_loss",
    "size_report",
    "sparse_matmul",
    "sparse_mlp_apply",
    "to_bcoo",
    "to_bcsr",
    "unscale_grads",
]
