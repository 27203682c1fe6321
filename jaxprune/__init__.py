"""jaxprune: functional pruning for JAX parameter pytrees.

The core pipeline, one small module each::

    params --score--> scores --allocate--> per-leaf sparsity --select--> masks --apply--> params
"""

from jaxprune.allocate import achieved_sparsity, check_budget, er_sparsity, erk_sparsity, uniform_sparsity
from jaxprune.counts import num_pruned
from jaxprune.errors import ConfigError, DataError, DataNotFound, JaxpruneError, PruningError
from jaxprune.masks import (
    LeafSummary,
    Summary,
    apply_masks,
    dense_masks,
    intersect_masks,
    is_nested,
    summary,
    union_masks,
)
from jaxprune.paths import flatten_with_paths, kernels, leaf_paths, map_with_path, matrices, path_str, selected_paths
from jaxprune.scores import (
    SCORERS,
    Scorer,
    compute_scores,
    get_scorer,
    magnitude_scores,
    movement_scores,
    random_scores,
    register_scorer,
    saliency_scores,
    taylor_scores,
)
from jaxprune.select import global_masks, prune_lowest, topk_masks
from jaxprune.structures import NM, STRUCTURES, Block, Channels, Neurons, Unstructured, get_structure, register_structure

from jaxprune import wiring  # noqa: E402
from jaxprune.wiring import output_kernels, reduction_axes  # noqa: E402
from jaxprune import structure  # noqa: E402
from jaxprune.structure import prune_structured  # noqa: E402
from jaxprune import train  # noqa: E402  (after the core: train imports it)
from jaxprune.lm import magnitude_layer, prune_lm, sparsegpt_layer, wanda_layer  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    # errors
    "JaxpruneError", "PruningError", "DataError", "DataNotFound", "ConfigError",
    # paths and selection
    "path_str", "leaf_paths", "map_with_path", "kernels", "matrices", "flatten_with_paths",
    "selected_paths",
    # scores
    "magnitude_scores", "random_scores", "saliency_scores", "movement_scores", "taylor_scores",
    "Scorer", "SCORERS", "register_scorer", "get_scorer", "compute_scores",
    # allocation
    "uniform_sparsity", "er_sparsity", "erk_sparsity", "achieved_sparsity", "check_budget",
    "num_pruned",
    # selection
    "topk_masks", "global_masks", "prune_lowest",
    "Unstructured", "NM", "Block", "Neurons", "Channels", "STRUCTURES", "register_structure",
    "get_structure", "wiring", "output_kernels", "reduction_axes",
    # structural pruning of any model (trace, group, shrink, rebuild: jaxprune.structure)
    "structure", "prune_structured",
    # masks
    "apply_masks", "dense_masks", "intersect_masks", "union_masks", "is_nested", "summary",
    "Summary", "LeafSummary",
    # training-time pruning (jaxprune.train: pruning, masked, schedules, set_target, ...)
    "train",
    # one-shot language-model pruning (jaxprune.lm)
    "prune_lm", "magnitude_layer", "wanda_layer", "sparsegpt_layer",
]
