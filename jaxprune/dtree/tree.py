"""Decision trees as a NamedTuple of flat node arrays, and their validation.

The layout follows scikit-learn's ``Tree``: node ``i`` splits on ``feature[i]`` at ``threshold[i]``
(``x[feature] <= threshold`` goes left), its children are ``left[i]`` and ``right[i]``, and a leaf has
``left == right == -1``. Arrays are kept on the host as numpy (``float64`` impurities and thresholds) so
cost-complexity pruning reproduces scikit-learn's arithmetic exactly; ``predict`` moves what it needs to
the device.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from jaxprune.errors import PruningError

LEAF = -1  # child index marking a leaf (scikit-learn's TREE_LEAF)
UNDEFINED = -2  # feature/threshold of a leaf (scikit-learn's TREE_UNDEFINED)


class DecisionTree(NamedTuple):
    """A binary decision tree as arrays over its ``n`` nodes (node 0 is the root).

    Fields:
      feature: ``(n,)`` int, split feature (``-2`` at leaves).
      threshold: ``(n,)`` float64, ``x[feature] <= threshold`` goes left (``-2`` at leaves).
      left, right: ``(n,)`` int, child node indices, ``-1`` at leaves.
      value: ``(n, k)`` float64, class fractions (classifier, ``k`` classes) or the mean (``k == 1``).
      n_samples: ``(n,)`` int, training samples reaching the node.
      weighted_n_samples: ``(n,)`` float64, their total sample weight.
      impurity: ``(n,)`` float64, node impurity (gini / entropy in bits / squared error).
      classes: ``(k,)`` class labels of a classifier; ``(0,)`` for a regressor.
    """

    feature: Any
    threshold: Any
    left: Any
    right: Any
    value: Any
    n_samples: Any
    weighted_n_samples: Any
    impurity: Any
    classes: Any


def is_classifier(tree: DecisionTree) -> bool:
    """True when ``tree`` predicts classes (it has a non-empty ``classes`` array).

    >>> from jaxprune.dtree import fit_tree
    >>> is_classifier(fit_tree([[0.0], [1.0]], [0, 1], criterion="gini"))
    True
    """
    return int(np.shape(tree.classes)[0]) > 0


def n_nodes(tree: DecisionTree) -> int:
    """Number of nodes (the length of every per-node array).

    >>> from jaxprune.dtree import fit_tree
    >>> n_nodes(fit_tree([[0.0], [1.0]], [0, 1], criterion="gini"))
    3
    """
    return int(np.shape(tree.left)[0])


def from_sklearn(est: Any) -> DecisionTree:
    """Convert a fitted scikit-learn ``DecisionTreeClassifier``/``Regressor`` (single output).

    >>> from sklearn.tree import DecisionTreeClassifier
    >>> est = DecisionTreeClassifier(max_depth=1).fit([[0.0], [1.0]], [0, 1])
    >>> from_sklearn(est).left.tolist()
    [1, -1, -1]
    """
    t = getattr(est, "tree_", None)
    if t is None:
        raise PruningError(f"from_sklearn: {type(est).__name__} is not a fitted scikit-learn tree (no tree_)")
    if t.n_outputs != 1:
        raise PruningError(f"from_sklearn: only single-output trees are supported, got n_outputs={t.n_outputs}")
    classes = getattr(est, "classes_", None)
    if classes is None:
        classes = np.zeros((0,), np.float64)
    else:
        classes = np.asarray(classes)
        if not np.issubdtype(classes.dtype, np.number) and classes.dtype != np.bool_:
            raise PruningError(f"from_sklearn: class labels must be numeric, got dtype {classes.dtype}; encode them first")
    tree = DecisionTree(
        feature=np.asarray(t.feature, np.int64).copy(),
        threshold=np.asarray(t.threshold, np.float64).copy(),
        left=np.asarray(t.children_left, np.int64).copy(),
        right=np.asarray(t.children_right, np.int64).copy(),
        value=np.asarray(t.value, np.float64)[:, 0, :].copy(),
        n_samples=np.asarray(t.n_node_samples, np.int64).copy(),
        weighted_n_samples=np.asarray(t.weighted_n_node_samples, np.float64).copy(),
        impurity=np.asarray(t.impurity, np.float64).copy(),
        classes=classes.copy(),
    )
    validate_tree(tree)
    return tree


def validate_tree(tree: DecisionTree) -> DecisionTree:
    """Check that the arrays form one binary tree rooted at node 0; raise ``PruningError`` naming the problem.

    Checks: equal lengths, children in range, leaves have both children ``-1``, every non-root node has
    exactly one parent, the root has none, and every node is reachable from the root (so no cycles).

    >>> from jaxprune.dtree import fit_tree
    >>> t = fit_tree([[0.0], [1.0]], [0, 1], criterion="gini")
    >>> validate_tree(t._replace(right=np.array([2, -1, 0]))) # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    PruningError: ...
    """
    if not isinstance(tree, DecisionTree):
        raise PruningError(f"expected a DecisionTree, got {type(tree).__name__}")
    arrays = {name: np.asarray(getattr(tree, name)) for name in DecisionTree._fields}
    n = arrays["left"].shape[0] if arrays["left"].ndim == 1 else -1
    if n < 1:
        raise PruningError(f"tree field 'left' must be a non-empty 1-D array, got shape {arrays['left'].shape}")
    for name, arr in arrays.items():
        if name == "classes":
            if arr.ndim != 1:
                raise PruningError(f"tree field 'classes' must be 1-D, got shape {arr.shape}")
            continue
        if arr.ndim < 1 or arr.shape[0] != n:
            raise PruningError(f"tree field {name!r} has shape {arr.shape}; every node array needs length {n} (as 'left')")
    value = arrays["value"]
    k = arrays["classes"].shape[0]
    if value.ndim != 2 or value.shape[1] != max(k, 1):
        raise PruningError(f"tree field 'value' must have shape ({n}, {max(k, 1)}), got {value.shape}")
    left, right = arrays["left"], arrays["right"]
    for name, child in (("left", left), ("right", right)):
        if not np.issubdtype(child.dtype, np.integer):
            raise PruningError(f"tree field {name!r} must be integer, got {child.dtype}")
        bad = np.flatnonzero((child < LEAF) | (child >= n))
        if bad.size:
            raise PruningError(f"tree field {name!r}: node {bad[0]} has out-of-range child {child[bad[0]]} (n_nodes={n})")
    one_child = np.flatnonzero((left == LEAF) != (right == LEAF))
    if one_child.size:
        i = one_child[0]
        raise PruningError(f"node {i} has exactly one child (left={left[i]}, right={right[i]}); need both or neither")
    internal = left != LEAF
    same = np.flatnonzero(internal & (left == right))
    if same.size:
        raise PruningError(f"node {same[0]}: left and right child are the same node {left[same[0]]}")
    children = np.concatenate([left[internal], right[internal]])
    counts = np.bincount(children, minlength=n)
    if counts[0]:
        parent = np.flatnonzero(internal & ((left == 0) | (right == 0)))[0]
        raise PruningError(f"root node 0 is a child of node {parent} (cycle)")
    twice = np.flatnonzero(counts > 1)
    if twice.size:
        raise PruningError(f"node {twice[0]} is reachable twice (it is a child of {counts[twice[0]]} nodes)")
    reached = node_depths(left, right) >= 0
    if not reached.all():
        raise PruningError(f"node {np.flatnonzero(~reached)[0]} is not reachable from the root (cycle or orphan)")
    return tree


def node_depths(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Depth of every node (root 0), ``-1`` for nodes not reached from the root.

    Breadth-first over whole levels; assumes each node has at most one parent (checked before), so a
    level can hold each node once and the loop ends after at most ``n`` levels.
    """
    n = left.shape[0]
    depth = np.full(n, -1, np.int64)
    frontier = np.array([0])
    d = 0
    while frontier.size and d <= n:
        depth[frontier] = d
        inner = frontier[left[frontier] != LEAF]
        frontier = np.concatenate([left[inner], right[inner]])
        frontier = frontier[depth[frontier] < 0]
        d += 1
    return depth


def node_parents(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Parent of every node (``-1`` for the root) of a valid tree."""
    parent = np.full(left.shape[0], -1, np.int64)
    inner = np.flatnonzero(left != LEAF)
    parent[left[inner]] = inner
    parent[right[inner]] = inner
    return parent


def preorder(left: np.ndarray, right: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Node indices in depth-first pre-order (node, left subtree, right subtree).

    With ``keep`` (an active-node mask) a node whose children are inactive is treated as a leaf.
    This is the order scikit-learn's depth-first builder numbers nodes in.
    """
    order = []
    stack = [0]
    while stack:
        i = stack.pop()
        order.append(i)
        lc = left[i]
        if lc != LEAF and (keep is None or keep[lc]):
            stack.append(int(right[i]))
            stack.append(int(lc))
    return np.asarray(order, np.int64)


def to_host(tree: DecisionTree) -> DecisionTree:
    """The tree with every field as a numpy array (raises on traced values)."""
    return DecisionTree(*(np.asarray(a) for a in tree))
