"""Pruning a decision tree into a node mask: cost-complexity and reduced-error pruning.

Both run on the host in numpy: they are short sequential loops over nodes, and cost-complexity pruning
must reproduce scikit-learn's float64 arithmetic step by step (its path is compared to 1e-9, and the order
of additions decides which of two equally weak links is cut first).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jaxprune.dtree.masks import as_mask, full_mask
from jaxprune.dtree.predict import threshold_f32
from jaxprune.dtree.tree import LEAF, DecisionTree, to_host, node_parents, preorder, is_classifier
from jaxprune.errors import PruningError


def _ancestors(parent: np.ndarray, node: int) -> np.ndarray:
    out = []
    node = parent[node]
    while node != LEAF:
        out.append(node)
        node = parent[node]
    return np.asarray(out, np.int64)


def _weakest_link(
    tree: DecisionTree, ccp_alpha: float | None, record: list | None = None
) -> tuple[np.ndarray, list[float], list[float]]:
    """Minimal cost-complexity pruning (Breiman et al. 1984, ch. 3.3) by repeatedly cutting the weakest link.

    R(t) = impurity(t) * w(t) / w(root) is the cost of node t as a leaf, R(T_t) the summed cost of the
    leaves of the branch below t, and g(t) = (R(t) - R(T_t)) / (|leaves(T_t)| - 1) the alpha at which
    collapsing t stops costing. Each step collapses the node with the smallest g (lowest index on ties,
    one node per step, as scikit-learn does). With ``ccp_alpha`` it stops before the first g > ccp_alpha.
    Returns (active-node mask, alphas, total leaf costs); ``record`` collects the mask after each cut.
    """
    t = to_host(tree)
    left, right = t.left, t.right
    n = left.shape[0]
    w = t.weighted_n_samples.astype(np.float64)
    r_node = w * t.impurity.astype(np.float64) / w[0]
    parent = node_parents(left, right)
    is_leaf = left == LEAF
    r_branch = np.zeros(n)
    n_leaves = np.zeros(n, np.int64)
    # Sum leaf costs into every ancestor leaf by leaf, in leaf-index order: the same sequence of float
    # additions as scikit-learn, so equal-looking alphas compare the same way.
    for leaf in np.flatnonzero(is_leaf):
        r_branch[leaf] = r_node[leaf]
        anc = _ancestors(parent, leaf)
        r_branch[anc] += r_node[leaf]
        n_leaves[anc] += 1
    pre = preorder(left, right)
    pos = np.empty(n, np.int64)
    pos[pre] = np.arange(n)
    size = np.ones(n, np.int64)
    for i in pre[::-1]:  # children come after their parent in pre-order
        if not is_leaf[i]:
            size[i] = 1 + size[left[i]] + size[right[i]]
    candidate = ~is_leaf
    active = np.ones(n, bool)
    alphas, costs = [0.0], [float(r_branch[0])]
    while candidate[0]:
        idx = np.flatnonzero(candidate)
        g = (r_node[idx] - r_branch[idx]) / (n_leaves[idx] - 1)
        j = int(np.argmin(g))
        node, effective = int(idx[j]), float(g[j])
        if ccp_alpha is not None and ccp_alpha < effective:
            break
        below = pre[pos[node] + 1 : pos[node] + size[node]]
        candidate[below] = False
        active[below] = False
        candidate[node] = False
        n_pruned = n_leaves[node] - 1
        n_leaves[node] = 0
        r_diff = r_node[node] - r_branch[node]
        r_branch[node] = r_node[node]
        anc = _ancestors(parent, node)
        n_leaves[anc] -= n_pruned
        r_branch[anc] += r_diff
        alphas.append(effective)
        costs.append(float(r_branch[0]))
        if record is not None:
            record.append(active.copy())
    return active, alphas, costs


def cost_complexity_path(tree: DecisionTree) -> tuple[np.ndarray, np.ndarray]:
    """Effective alphas of the weakest-link sequence and the total leaf impurity after each cut.

    Same definition (and values) as scikit-learn's ``cost_complexity_pruning_path``: the first entry is
    ``(0.0, R(T))`` for the full tree, the last collapses the root.

    >>> from jaxprune.dtree import fit_tree
    >>> t = fit_tree([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1], criterion="gini")
    >>> [a.tolist() for a in cost_complexity_path(t)]
    [[0.0, 0.5], [0.0, 0.5]]
    """
    _, alphas, costs = _weakest_link(tree, None)
    return np.asarray(alphas, np.float64), np.asarray(costs, np.float64)


def _check_alpha(ccp_alpha: Any) -> float:
    try:
        a = float(ccp_alpha)
    except (TypeError, ValueError):
        raise PruningError(f"ccp_alpha must be a real number, got {ccp_alpha!r}") from None
    if math.isnan(a):
        raise PruningError(f"ccp_alpha must not be NaN, got {ccp_alpha!r}")
    if a < 0:
        raise PruningError(f"ccp_alpha must be >= 0, got {ccp_alpha!r}")
    return a


def prune(tree: DecisionTree, ccp_alpha: float) -> np.ndarray:
    """Node mask of the minimal cost-complexity subtree for ``ccp_alpha`` (Breiman et al. 1984).

    It is the tree scikit-learn builds with ``ccp_alpha=a``: cut weakest links while their effective alpha
    is ``<= a``. As in scikit-learn, ``a == 0`` prunes nothing (not even zero-gain splits).

    >>> from jaxprune.dtree import fit_tree
    >>> t = fit_tree([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1], criterion="gini")
    >>> prune(t, 0.25).tolist(), prune(t, 0.5).tolist()
    ([True, True, True], [True, False, False])
    """
    a = _check_alpha(ccp_alpha)
    if a == 0.0:
        return full_mask(tree)
    active, _, _ = _weakest_link(tree, a)
    return active


def _val_arrays(tree: DecisionTree, X_val: Any, y_val: Any) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X_val)
    y = np.asarray(y_val)
    if X.ndim != 2:
        raise PruningError(f"X_val must be 2-D (n_samples, n_features), got shape {X.shape}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise PruningError(f"y_val must be 1-D with one entry per row of X_val ({X.shape[0]}), got shape {y.shape}")
    if X.shape[0] == 0:
        raise PruningError("the validation set is empty")
    feature = np.asarray(tree.feature)
    if feature.size and X.shape[1] <= int(feature.max()):
        raise PruningError(f"X_val has {X.shape[1]} features but the tree splits on feature {int(feature.max())}")
    X = X.astype(np.float32)
    if np.isnan(X).any():
        raise PruningError("X_val contains NaN")
    return X, y


def _node_errors(tree: DecisionTree, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Validation error each node would make as a leaf: misclassified count, or summed squared error."""
    t = to_host(tree)
    if is_classifier(t):
        label = t.classes[np.argmax(t.value, axis=1)]
        loss_of = lambda node: (label[node] != y).astype(np.float64)  # noqa: E731
    else:
        yf = y.astype(np.float64)
        loss_of = lambda node: (yf - t.value[node, 0]) ** 2  # noqa: E731
    thr = threshold_f32(t.threshold)
    err = np.zeros(t.left.shape[0])
    node = np.zeros(X.shape[0], np.int64)
    rows = np.arange(X.shape[0])
    alive = np.ones(X.shape[0], bool)
    while alive.any():
        np.add.at(err, node[alive], loss_of(node)[alive])
        alive &= t.left[node] != LEAF
        go_left = X[rows, np.maximum(t.feature[node], 0)] <= thr[node]
        node = np.where(alive, np.where(go_left, t.left[node], t.right[node]), node)
    return err


def reduced_error_prune(tree: DecisionTree, X_val: Any, y_val: Any, node_mask: Any = None) -> np.ndarray:
    """Reduced-error pruning (Quinlan 1987) on a held-out set; returns a node mask.

    Bottom-up, each internal node is collapsed to a leaf when that does not increase the validation error
    (misclassifications, or summed squared error for a regressor) of its already-pruned subtree. Ties
    prune: the smaller tree wins, so a subtree that no validation sample reaches collapses too. Starts from
    ``node_mask`` when given (e.g. after cost-complexity pruning).

    >>> from jaxprune.dtree import fit_tree
    >>> t = fit_tree([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1], criterion="gini")
    >>> reduced_error_prune(t, [[0.0], [3.0]], [0, 1]).tolist()
    [True, True, True]
    >>> reduced_error_prune(t, [[0.0], [3.0]], [0, 0]).tolist()
    [True, False, False]
    """
    start = as_mask(tree, node_mask)
    X, y = _val_arrays(tree, X_val, y_val)
    leaf_err = _node_errors(tree, X, y)
    left, right = np.asarray(tree.left), np.asarray(tree.right)
    pre = preorder(left, right, keep=start)
    collapsed = np.zeros(left.shape[0], bool)
    err = leaf_err.copy()
    for i in pre[::-1]:  # post-order is enough: children are decided before their parent
        if left[i] == LEAF or not start[left[i]]:
            continue
        below = err[left[i]] + err[right[i]]
        if leaf_err[i] <= below:
            collapsed[i] = True
        else:
            err[i] = below
    active = np.zeros_like(start)
    active[0] = True
    for i in pre:
        if left[i] != LEAF and active[i] and start[left[i]] and not collapsed[i]:
            active[left[i]] = active[right[i]] = True
    return active


def select_ccp_alpha(tree: DecisionTree, X_val: Any, y_val: Any) -> float:
    """The path alpha whose pruned tree scores best on a validation set (largest alpha on ties).

    Score: accuracy for a classifier, negative mean squared error for a regressor.

    >>> from jaxprune.dtree import fit_tree
    >>> t = fit_tree([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1], criterion="gini")
    >>> select_ccp_alpha(t, [[0.0], [3.0]], [0, 1])
    0.0
    """
    X, y = _val_arrays(tree, X_val, y_val)
    after_cut = [full_mask(tree)]
    _, path, _ = _weakest_link(tree, None, record=after_cut)
    alphas = np.asarray(path)
    err = _node_errors(tree, X, y)  # a pruned tree's error is the sum over its leaves: compute once
    best, best_score = 0.0, -np.inf
    for a in np.maximum(alphas, 0.0):  # rounding can make a zero-gain link slightly negative
        # The mask prune(tree, a) returns, read off the recorded path: cuts stop before the first g > a.
        later = np.flatnonzero(alphas[1:] > a)
        mask = after_cut[0] if a == 0.0 else after_cut[later[0] if later.size else len(alphas) - 1]
        score = -_masked_error(tree, mask, err) / X.shape[0]
        if score >= best_score:
            best, best_score = float(a), score
    return best


def _masked_error(tree: DecisionTree, mask: np.ndarray, leaf_err: np.ndarray) -> float:
    """Total validation error of the pruned tree: the leaf errors of its leaves add up to it."""
    left = np.asarray(tree.left)
    is_leaf = mask.copy()
    inner = left != LEAF
    is_leaf[inner] &= ~mask[left[inner]]
    return float(leaf_err[is_leaf].sum())
