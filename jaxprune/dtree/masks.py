"""Node masks over a decision tree: validation, counting and compaction.

A node mask is a boolean array with one entry per node. ``mask[i]`` is True when node ``i`` is *active*,
i.e. reachable from the root in the pruned tree. Pruning a subtree at node ``t`` keeps ``t`` (it becomes a
leaf predicting its own ``value``) and deactivates all of its descendants. So a valid mask keeps the root,
keeps both or neither child of every active internal node, and never keeps a child of an inactive node.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxprune.dtree.tree import LEAF, UNDEFINED, DecisionTree, node_depths, preorder, n_nodes
from jaxprune.errors import PruningError


def full_mask(tree: DecisionTree) -> np.ndarray:
    """The all-True mask (nothing pruned).

    >>> from jaxprune.dtree import fit_tree
    >>> full_mask(fit_tree([[0.0], [1.0]], [0, 1], criterion="gini")).tolist()
    [True, True, True]
    """
    return np.ones(n_nodes(tree), bool)


def validate_mask(tree: DecisionTree, node_mask: Any) -> np.ndarray:
    """Check ``node_mask`` against ``tree`` and return it as a numpy bool array.

    Raises ``PruningError`` for a wrong length or dtype, a pruned root, an active node whose parent is
    pruned, or an active node with exactly one active child.

    >>> from jaxprune.dtree import fit_tree
    >>> t = fit_tree([[0.0], [1.0]], [0, 1], criterion="gini")
    >>> validate_mask(t, np.array([True, False, False])).tolist()
    [True, False, False]
    """
    mask = np.asarray(node_mask)
    n = n_nodes(tree)
    if mask.dtype != np.bool_:
        raise PruningError(f"node_mask must be a boolean array, got dtype {mask.dtype}")
    if mask.shape != (n,):
        raise PruningError(f"node_mask has shape {mask.shape}; the tree has {n} nodes, expected ({n},)")
    if not mask[0]:
        raise PruningError("node_mask prunes the root node 0; the root always exists (collapse it to a leaf instead)")
    left, right = np.asarray(tree.left), np.asarray(tree.right)
    inner = np.flatnonzero(left != LEAF)
    lk, rk = mask[left[inner]], mask[right[inner]]
    orphan = inner[~mask[inner] & (lk | rk)]
    if orphan.size:
        i = orphan[0]
        child = left[i] if mask[left[i]] else right[i]
        raise PruningError(f"node_mask keeps node {child}, a child of pruned node {i}")
    half = inner[lk != rk]
    if half.size:
        i = half[0]
        raise PruningError(f"node_mask keeps exactly one child of node {i} (left {left[i]}: {mask[left[i]]}, right {right[i]}: {mask[right[i]]})")
    return mask


def as_mask(tree: DecisionTree, node_mask: Any) -> np.ndarray:
    return full_mask(tree) if node_mask is None else validate_mask(tree, node_mask)


def leaf_mask(tree: DecisionTree, node_mask: Any = None) -> np.ndarray:
    """Nodes that are leaves of the pruned tree (active, with no active child).

    >>> from jaxprune.dtree import fit_tree
    >>> leaf_mask(fit_tree([[0.0], [1.0]], [0, 1], criterion="gini")).tolist()
    [False, True, True]
    """
    mask = as_mask(tree, node_mask)
    left = np.asarray(tree.left)
    has_child = np.zeros_like(mask)
    inner = left != LEAF
    has_child[inner] = mask[left[inner]]
    return mask & ~has_child


def n_leaves(tree: DecisionTree, node_mask: Any = None) -> int:
    """Number of leaves of the (pruned) tree.

    >>> from jaxprune.dtree import fit_tree
    >>> t = fit_tree([[0.0], [1.0]], [0, 1], criterion="gini")
    >>> n_leaves(t), n_leaves(t, np.array([True, False, False]))
    (2, 1)
    """
    return int(leaf_mask(tree, node_mask).sum())


def n_active(tree: DecisionTree, node_mask: Any = None) -> int:
    """Number of active nodes of the (pruned) tree.

    >>> from jaxprune.dtree import fit_tree
    >>> n_active(fit_tree([[0.0], [1.0]], [0, 1], criterion="gini"))
    3
    """
    return int(as_mask(tree, node_mask).sum())


def depth(tree: DecisionTree, node_mask: Any = None) -> int:
    """Depth of the (pruned) tree: edges on the longest root-to-leaf path (a lone root has depth 0).

    >>> from jaxprune.dtree import fit_tree
    >>> depth(fit_tree([[0.0], [1.0]], [0, 1], criterion="gini"))
    1
    """
    mask = as_mask(tree, node_mask)
    return int(node_depths(np.asarray(tree.left), np.asarray(tree.right))[mask].max())


def compact(tree: DecisionTree, node_mask: Any) -> DecisionTree:
    """The pruned tree with only the active nodes, renumbered in depth-first pre-order.

    Collapsed subtree roots become leaves (children ``-1``, feature/threshold ``-2``) that keep their own
    ``value``, so ``predict(compact(t, m), X) == predict(t, X, node_mask=m)``.

    >>> from jaxprune.dtree import fit_tree
    >>> t = fit_tree([[0.0], [1.0], [2.0]], [0, 1, 1], criterion="gini")
    >>> compact(t, np.array([True, False, False])).left.tolist()
    [-1]
    """
    mask = validate_mask(tree, node_mask)
    left, right = np.asarray(tree.left), np.asarray(tree.right)
    order = preorder(left, right, keep=mask)
    new_id = np.full(left.shape[0], LEAF, np.int64)
    new_id[order] = np.arange(order.shape[0])
    is_leaf = leaf_mask(tree, mask)[order]
    new_left = np.where(is_leaf, LEAF, new_id[np.where(is_leaf, 0, left[order])])
    new_right = np.where(is_leaf, LEAF, new_id[np.where(is_leaf, 0, right[order])])
    feature = np.where(is_leaf, UNDEFINED, np.asarray(tree.feature)[order])
    threshold = np.where(is_leaf, float(UNDEFINED), np.asarray(tree.threshold)[order])
    return DecisionTree(
        feature=feature.astype(np.asarray(tree.feature).dtype),
        threshold=threshold.astype(np.asarray(tree.threshold).dtype),
        left=new_left.astype(left.dtype),
        right=new_right.astype(right.dtype),
        value=np.asarray(tree.value)[order],
        n_samples=np.asarray(tree.n_samples)[order],
        weighted_n_samples=np.asarray(tree.weighted_n_samples)[order],
        impurity=np.asarray(tree.impurity)[order],
        classes=np.asarray(tree.classes).copy(),
    )
