"""Jitted, vmapped prediction for array decision trees, with optional node masks.

Every sample walks from the root for a fixed number of steps (the tree's depth, a static loop bound)
with ``lax.fori_loop``; a sample that reaches a node whose children are leaves of the original tree *or*
masked out stays there. So a mask changes the answer without rebuilding arrays and without recompiling.

Inputs are compared in float32, as scikit-learn does (it casts ``X`` to float32 and compares with float64
thresholds). Thresholds are rounded *down* to float32, which gives exactly the same decisions for every
float32 input: ``x <= t`` iff ``x <= largest float32 <= t``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune.dtree.masks import as_mask, depth
from jaxprune.dtree.tree import LEAF, DecisionTree, is_classifier
from jaxprune.errors import PruningError


def threshold_f32(threshold: np.ndarray) -> np.ndarray:
    """Largest float32 not above each float64 threshold (see the module docstring for why)."""
    thr = np.asarray(threshold, np.float64)
    with np.errstate(over="ignore"):
        t32 = thr.astype(np.float32)
    over = t32.astype(np.float64) > thr
    t32[over] = np.nextafter(t32[over], np.float32(-np.inf))
    return t32


@functools.partial(jax.jit, static_argnames=("n_steps",))
def _walk(feature, threshold, left, right, active, X, *, n_steps: int):
    """Leaf index (in the masked tree) of every row of ``X``."""

    def one(x):
        def step(_, node):
            lc = left[node]
            descend = (lc != LEAF) & active[jnp.maximum(lc, 0)]
            go_left = x[jnp.maximum(feature[node], 0)] <= threshold[node]
            return jnp.where(descend, jnp.where(go_left, lc, right[node]), node)

        return lax.fori_loop(0, n_steps, step, jnp.zeros((), jnp.int32))

    return jax.vmap(one)(X)


def _check_X(tree: DecisionTree, X: Any) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise PruningError(f"X must be a 2-D array (n_samples, n_features), got shape {X.shape}")
    feature = np.asarray(tree.feature)
    need = int(feature.max()) + 1 if feature.size else 0
    if X.shape[1] < need:
        raise PruningError(f"X has {X.shape[1]} features but the tree splits on feature {need - 1}")
    X = X.astype(np.float32)
    if np.isnan(X).any():
        raise PruningError("X contains NaN; trees here have no missing-value routing")
    return X


def apply(tree: DecisionTree, X: Any, node_mask: Any = None) -> jax.Array:
    """Index of the (pruned-tree) leaf that each row of ``X`` lands in, like sklearn's ``apply``.

    >>> from jaxprune.dtree import fit_tree
    >>> t = fit_tree([[0.0], [1.0]], [0, 1], criterion="gini")
    >>> apply(t, np.array([[0.0], [1.0]])).tolist()
    [1, 2]
    """
    mask = as_mask(tree, node_mask)
    X32 = _check_X(tree, X)
    return _walk(
        jnp.asarray(np.asarray(tree.feature), jnp.int32),
        jnp.asarray(threshold_f32(tree.threshold)),
        jnp.asarray(np.asarray(tree.left), jnp.int32),
        jnp.asarray(np.asarray(tree.right), jnp.int32),
        jnp.asarray(mask),
        jnp.asarray(X32),
        n_steps=depth(tree),
    )


def predict_proba(tree: DecisionTree, X: Any, node_mask: Any = None) -> jax.Array:
    """Class probabilities ``(n_samples, n_classes)`` of a classifier (float32).

    >>> from jaxprune.dtree import fit_tree
    >>> t = fit_tree([[0.0], [1.0]], [0, 1], criterion="gini")
    >>> predict_proba(t, np.array([[0.0]])).tolist()
    [[1.0, 0.0]]
    """
    if not is_classifier(tree):
        raise PruningError("predict_proba needs a classifier tree (tree.classes is empty)")
    leaf = apply(tree, X, node_mask)
    return jnp.asarray(np.asarray(tree.value, np.float32))[leaf]


def predict(tree: DecisionTree, X: Any, node_mask: Any = None) -> jax.Array:
    """Predicted class labels (classifier) or values (regressor) of the (pruned) tree.

    A classifier predicts ``classes[argmax(value)]`` with the argmax taken in float64 on the host (first
    class wins ties, as in scikit-learn).

    >>> from jaxprune.dtree import fit_tree
    >>> t = fit_tree([[0.0], [1.0], [2.0]], [0, 1, 1], criterion="gini")
    >>> predict(t, np.array([[0.0], [2.0]])).tolist()
    [0, 1]
    >>> predict(t, np.array([[0.0], [2.0]]), node_mask=np.array([True, False, False])).tolist()
    [1, 1]
    """
    leaf = apply(tree, X, node_mask)
    value = np.asarray(tree.value)
    if is_classifier(tree):
        classes = np.asarray(tree.classes)
        table = classes[np.argmax(value, axis=1)]
        table = table.astype(jax.dtypes.canonicalize_dtype(table.dtype))
    else:
        table = value[:, 0].astype(np.float32)
    return jnp.asarray(table)[leaf]
