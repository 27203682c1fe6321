"""One-shot pruning of transformer language models from calibration data (magnitude, Wanda,
SparseGPT): layer functions over one ``(in, out)`` kernel and a model-level sequential driver.

See ``docs/lm_pruning.md``.
"""

from jaxprune.lm.driver import METHODS, LayerReport, LMPruneResult, check_calibration, dense_inputs, prune_lm
from jaxprune.lm.layers import check_layer_args, magnitude_layer, sparsegpt_layer, wanda_layer

__all__ = [
    "METHODS", "LayerReport", "LMPruneResult", "check_calibration", "dense_inputs", "prune_lm",
    "check_layer_args", "magnitude_layer", "sparsegpt_layer", "wanda_layer",
]
