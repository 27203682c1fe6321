"""CART tree growing in numpy (Breiman et al. 1984), producing scikit-learn's trees.

Greedy depth-first growth with the exhaustive "best" splitter: at each node every feature is sorted and
every cut between two distinct values is scored with scikit-learn's proxy for the impurity decrease. The
stopping rules, the float32 comparison of inputs, the midpoint thresholds, the 1e-7 "distinct value" gap
and the pre-order node numbering follow scikit-learn, so on data without ties between candidate splits
the tree is the same. On ties scikit-learn takes the first candidate in a *random* feature order; here the
lowest feature index, then the lowest threshold, wins.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxprune.dtree.tree import LEAF, UNDEFINED, DecisionTree
from jaxprune.errors import PruningError

CLASSIFICATION = ("gini", "entropy", "log_loss")
_REGRESSION = ("squared_error",)
_EPSILON = np.finfo(np.float64).eps  # scikit-learn treats impurity <= eps as pure
_GAP = np.float32(1e-7)  # scikit-learn's FEATURE_THRESHOLD: closer float32 values count as equal
_LOG2 = np.log(2.0)


def _class_impurity(counts: np.ndarray, n: np.ndarray, criterion: str) -> np.ndarray:
    """Gini index or entropy (bits) of count vectors ``(..., k)`` over ``n`` samples, summed class by class."""
    out = np.zeros(counts.shape[:-1])
    if criterion == "gini":
        sq = np.zeros(counts.shape[:-1])
        for c in range(counts.shape[-1]):
            sq = sq + counts[..., c] * counts[..., c]
        return 1.0 - sq / (n * n)
    for c in range(counts.shape[-1]):
        p = counts[..., c] / n
        safe = np.where(p > 0, p, 1.0)
        out = out - np.where(p > 0, p * (np.log(safe) / _LOG2), 0.0)
    return out


def _best_split(Xn: np.ndarray, Yn: np.ndarray, criterion: str, min_samples_leaf: int):
    """Best (feature, left-size, threshold, impurity_left, impurity_right, sorted order) or None.

    ``Yn`` is the one-hot class matrix ``(m, k)`` or the targets and their squares ``(m, 2)``.
    """
    m = Xn.shape[0]
    order = np.argsort(Xn, axis=0, kind="stable")
    Xs = np.take_along_axis(Xn, order, axis=0)
    n_left = np.arange(1, m, dtype=np.float64)[:, None]
    n_right = m - n_left
    valid = Xs[1:] > Xs[:-1] + _GAP
    valid &= (n_left >= min_samples_leaf) & (n_right >= min_samples_leaf)
    if not valid.any():
        return None
    cum = np.cumsum(Yn[order], axis=0)[:-1]  # (m - 1, d, k): sums over the left part
    total = Yn.sum(axis=0)
    right = total - cum
    if criterion in _REGRESSION:
        proxy = cum[..., 0] ** 2 / n_left + right[..., 0] ** 2 / n_right
    else:
        imp_l = _class_impurity(cum, n_left, criterion)
        imp_r = _class_impurity(right, n_right, criterion)
        proxy = -n_right * imp_r - n_left * imp_l
    proxy = np.where(valid, proxy, -np.inf)
    flat = int(np.argmax(proxy.T))  # feature-major: lowest feature, then lowest cut, wins ties
    f, p = divmod(flat, m - 1)
    nl, nr = p + 1, m - p - 1
    if criterion in _REGRESSION:
        imps = [s[1] / k - (s[0] / k) ** 2 for s, k in ((cum[p, f], nl), (right[p, f], nr))]
    else:
        imps = [float(_class_impurity(s, np.float64(k), criterion)) for s, k in ((cum[p, f], nl), (right[p, f], nr))]
    # Midpoint as a sum of halves (no overflow), in float64 from the float32 inputs.
    threshold = np.float64(Xs[p, f]) / 2.0 + np.float64(Xs[p + 1, f]) / 2.0
    return f, nl, threshold, imps[0], imps[1], order[:, f]


def _check_int(name: str, value: Any, low: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise PruningError(f"fit_tree: {name} must be an integer >= {low}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def fit_tree(
    X: Any,
    y: Any,
    *,
    criterion: str = "gini",
    max_depth: int | None = None,
    min_samples_split: int = 2,
    min_samples_leaf: int = 1,
    min_impurity_decrease: float = 0.0,
) -> DecisionTree:
    """Grow a CART tree (classification: ``gini``/``entropy``; regression: ``squared_error``).

    Same stopping rules as scikit-learn's ``DecisionTree*(splitter="best")`` with unit sample weights.

    >>> t = fit_tree([[0.0], [1.0], [2.0]], [0, 1, 1], criterion="gini")
    >>> t.threshold.tolist(), t.left.tolist()
    ([0.5, -2.0, -2.0], [1, -1, -1])
    """
    if criterion not in CLASSIFICATION + _REGRESSION:
        raise PruningError(f"fit_tree: criterion must be one of {CLASSIFICATION + _REGRESSION}, got {criterion!r}")
    max_depth = _check_int("max_depth", max_depth, 1, allow_none=True)
    min_samples_split = _check_int("min_samples_split", min_samples_split, 2)
    min_samples_leaf = _check_int("min_samples_leaf", min_samples_leaf, 1)
    if not min_impurity_decrease >= 0.0:
        raise PruningError(f"fit_tree: min_impurity_decrease must be >= 0, got {min_impurity_decrease!r}")
    X = np.asarray(X, np.float32)  # scikit-learn splits on float32 copies of X
    y = np.asarray(y)
    if X.ndim != 2 or X.shape[0] == 0:
        raise PruningError(f"fit_tree: X must be a non-empty 2-D array, got shape {X.shape}")
    if y.shape != (X.shape[0],):
        raise PruningError(f"fit_tree: y must have shape ({X.shape[0]},), got {y.shape}")
    if not np.isfinite(X).all():
        raise PruningError("fit_tree: X contains NaN or infinity")
    classify = criterion in CLASSIFICATION
    if criterion == "log_loss":
        criterion = "entropy"  # scikit-learn's alias
    if classify:
        if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
            raise PruningError(f"fit_tree: class labels must be numeric, got dtype {y.dtype}")
        classes, yi = np.unique(y, return_inverse=True)
        Y = np.eye(classes.shape[0])[yi]
    else:
        classes = np.zeros((0,), np.float64)
        yf = y.astype(np.float64)
        if not np.isfinite(yf).all():
            raise PruningError("fit_tree: y contains NaN or infinity")
        Y = np.stack([yf, yf * yf], axis=1)
    max_depth = np.iinfo(np.int64).max if max_depth is None else max_depth
    n_total = float(X.shape[0])

    nodes: list[tuple] = []  # (feature, threshold, value, n, impurity), in pre-order
    left: list[int] = []
    right: list[int] = []
    root_sum = Y.sum(axis=0)
    if classify:
        root_imp = float(_class_impurity(root_sum, n_total, criterion))
    else:
        root_imp = root_sum[1] / n_total - (root_sum[0] / n_total) ** 2
    # Depth-first with an explicit stack, left child popped first: pre-order ids, as scikit-learn.
    stack = [(np.arange(X.shape[0]), 0, -1, False, root_imp)]
    while stack:
        idx, d, parent, is_left, impurity = stack.pop()
        m = idx.shape[0]
        node_id = len(nodes)
        if parent >= 0:
            (left if is_left else right)[parent] = node_id
        sums = Y[idx].sum(axis=0)
        value = sums / m if classify else sums[:1] / m
        split = None
        if not (d >= max_depth or m < min_samples_split or m < 2 * min_samples_leaf or impurity <= _EPSILON):
            split = _best_split(X[idx], Y[idx], criterion, min_samples_leaf)
        if split is not None:
            f, nl, thr, imp_l, imp_r, order = split
            gain = (m / n_total) * (impurity - (m - nl) / m * imp_r - nl / m * imp_l)
            if gain + _EPSILON < min_impurity_decrease:
                split = None
        left.append(LEAF)
        right.append(LEAF)
        if split is None:
            nodes.append((UNDEFINED, float(UNDEFINED), value, m, impurity))
            continue
        nodes.append((f, thr, value, m, impurity))
        stack.append((idx[order[nl:]], d + 1, node_id, False, imp_r))
        stack.append((idx[order[:nl]], d + 1, node_id, True, imp_l))
    n_samples = np.array([n[3] for n in nodes], np.int64)
    return DecisionTree(
        feature=np.array([n[0] for n in nodes], np.int64),
        threshold=np.array([n[1] for n in nodes], np.float64),
        left=np.array(left, np.int64),
        right=np.array(right, np.int64),
        value=np.stack([n[2] for n in nodes]).astype(np.float64),
        n_samples=n_samples,
        weighted_n_samples=n_samples.astype(np.float64),
        impurity=np.array([n[4] for n in nodes], np.float64),
        classes=classes,
    )
