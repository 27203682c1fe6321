"""Decision trees as array pytrees, and their pruning as node masks.

See ``docs/trees.md``. A tree is a :class:`DecisionTree` NamedTuple of per-node arrays (scikit-learn's
layout); pruning returns a boolean node mask (True = node kept); ``predict`` honours a mask without
rebuilding arrays and ``compact`` rebuilds a smaller tree when wanted.
"""

from jaxprune.dtree.cart import fit_tree
from jaxprune.dtree.masks import compact, depth, full_mask, leaf_mask, n_active, n_leaves, validate_mask
from jaxprune.dtree.predict import apply, predict, predict_proba
from jaxprune.dtree.pruning import cost_complexity_path, prune, reduced_error_prune, select_ccp_alpha
from jaxprune.dtree.tree import DecisionTree, from_sklearn, is_classifier, n_nodes, validate_tree

__all__ = [
    "DecisionTree",
    "apply",
    "compact",
    "cost_complexity_path",
    "depth",
    "fit_tree",
    "from_sklearn",
    "full_mask",
    "is_classifier",
    "leaf_mask",
    "n_active",
    "n_leaves",
    "n_nodes",
    "predict",
    "predict_proba",
    "prune",
    "reduced_error_prune",
    "select_ccp_alpha",
    "validate_mask",
    "validate_tree",
]
