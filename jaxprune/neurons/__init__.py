"""Data-driven and weight-based neuron/channel criteria.

Pipeline: ``collect_activation_stats(model, variables, batches, layers=...)`` -> ``{layer: UnitStats}``
-> a criterion (``entropy``, ``apoz``, ``hoyer``, ``stability``, ``variance``; or ``weight_norm`` /
``taylor`` on params) -> ``{layer: (units,)}`` -> ``unit_scores_to_tree(scores, params)`` -> the
lead's ``topk_masks(scores_tree, sparsities, structure=Neurons(axis=-1))``. ``layers=`` chooses the
activations of an unmodified linen / nnx model by module path (``{'fc1': 'head:input'}`` for fc1's
post-activation units); without it the model's ``sow_activation`` calls are read.
"""

from jaxprune.neurons.capture import capture_activations, collect_activation_stats, hidden_layers
from jaxprune.neurons.criteria import (
    CRITERIA,
    NeuronCriterion,
    apoz,
    entropy,
    get_criterion,
    hoyer,
    l1_l2_ratio,
    stability,
    taylor,
    variance,
    weight_norm,
)
from jaxprune.neurons.stats import (
    DEFAULT_BINS,
    UnitStats,
    UnitSummary,
    finalize_unit_stats,
    init_unit_stats,
    unit_stats_from_array,
    update_unit_stats,
    with_observed_range,
)
from jaxprune.neurons.tree import keep_score, unit_scores_to_tree

__all__ = [
    "CRITERIA",
    "DEFAULT_BINS",
    "NeuronCriterion",
    "UnitStats",
    "UnitSummary",
    "apoz",
    "capture_activations",
    "collect_activation_stats",
    "entropy",
    "finalize_unit_stats",
    "get_criterion",
    "hidden_layers",
    "hoyer",
    "init_unit_stats",
    "keep_score",
    "l1_l2_ratio",
    "stability",
    "taylor",
    "unit_scores_to_tree",
    "unit_stats_from_array",
    "update_unit_stats",
    "variance",
    "weight_norm",
    "with_observed_range",
]
