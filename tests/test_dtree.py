"""Tests for jaxprune.dtree: array decision trees, cost-complexity / reduced-error pruning as node masks."""

import functools
import importlib
import itertools
import pathlib

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn import datasets
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from jaxprune.dtree import (
    DecisionTree,
    apply,
    compact,
    cost_complexity_path,
    depth,
    fit_tree,
    from_sklearn,
    full_mask,
    n_active,
    n_leaves,
    predict,
    predict_proba,
    prune,
    reduced_error_prune,
    select_ccp_alpha,
    validate_mask,
    validate_tree,
)
from jaxprune.dtree.experiment import run_tree
from jaxprune.dtree.predict import threshold_f32, _walk
from jaxprune.errors import ConfigError, PruningError

LOADERS = {
    "digits": datasets.load_digits,
    "breast_cancer": datasets.load_breast_cancer,
    "iris": datasets.load_iris,
    "diabetes": datasets.load_diabetes,
}


@functools.cache
def _data(name):
    return LOADERS[name](return_X_y=True)


@functools.cache
def _sk(name, criterion, max_depth, ccp_alpha=0.0):
    X, y = _data(name)
    cls = DecisionTreeRegressor if criterion == "squared_error" else DecisionTreeClassifier
    return cls(criterion=criterion, max_depth=max_depth, random_state=0, ccp_alpha=ccp_alpha).fit(X, y)


@functools.cache
def _tree(name, criterion, max_depth):
    return from_sklearn(_sk(name, criterion, max_depth))


CASES = [
    ("digits", "gini", None),
    ("digits", "entropy", 6),
    ("breast_cancer", "gini", None),
    ("breast_cancer", "entropy", 4),
    ("iris", "gini", None),
    ("diabetes", "squared_error", 8),
    ("diabetes", "squared_error", None),
]


def _same_arrays(a: DecisionTree, b: DecisionTree, fields=("feature", "threshold", "left", "right", "n_samples")):
    assert a.left.shape == b.left.shape, (a.left.shape, b.left.shape)
    for f in fields:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


# ---------------------------------------------------------------------------- cost-complexity pruning


@pytest.mark.parametrize("name,criterion,max_depth", CASES)
def test_ccp_path_matches_sklearn(name, criterion, max_depth):
    X, y = _data(name)
    ref = _sk(name, criterion, max_depth).cost_complexity_pruning_path(X, y)
    alphas, impurities = cost_complexity_path(_tree(name, criterion, max_depth))
    assert alphas.shape == ref.ccp_alphas.shape
    np.testing.assert_allclose(alphas, ref.ccp_alphas, rtol=0, atol=1e-9)
    np.testing.assert_allclose(impurities, ref.impurities, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name,criterion,max_depth", CASES[:2] + CASES[3:6])
def test_prune_equals_sklearn_ccp_alpha(name, criterion, max_depth):
    X, y = _data(name)
    tree = _tree(name, criterion, max_depth)
    alphas, _ = cost_complexity_path(tree)
    k = len(alphas)
    picks = [alphas[k // 4], alphas[k // 2], 0.5 * (alphas[3 * k // 4] + alphas[3 * k // 4 + 1]), alphas[-2]]
    for a in picks:
        a = float(max(a, 0.0))
        mask = prune(tree, a)
        est = _sk(name, criterion, max_depth, ccp_alpha=a)
        ref = from_sklearn(est)
        # scikit-learn rebuilds its pruned tree in pre-order, as compact does: the arrays must agree.
        _same_arrays(compact(tree, mask), ref, ("feature", "threshold", "left", "right", "n_samples", "value", "impurity"))
        assert n_leaves(tree, mask) == est.get_n_leaves()
        assert depth(tree, mask) == est.get_depth()
        got = np.asarray(predict(tree, X, node_mask=mask))
        if criterion == "squared_error":
            np.testing.assert_allclose(got, est.predict(X), rtol=1e-6)
        else:
            np.testing.assert_array_equal(got, est.predict(X))


def test_prune_alpha_zero_and_huge():
    tree = _tree("iris", "gini", None)
    assert prune(tree, 0.0).all()
    mask = prune(tree, 1e9)
    assert n_active(tree, mask) == 1 and n_leaves(tree, mask) == 1


@pytest.mark.parametrize("bad", [-1e-3, float("nan"), "big", None])
def test_prune_bad_alpha(bad):
    with pytest.raises(PruningError, match="ccp_alpha"):
        prune(_tree("iris", "gini", None), bad)


@given(st.floats(0.0, 0.05), st.floats(0.0, 0.05))
def test_ccp_masks_are_nested(a, b):
    tree = _tree("digits", "gini", None)
    small, large = prune(tree, min(a, b)), prune(tree, max(a, b))
    assert not (large & ~small).any()  # every node kept at the larger alpha is kept at the smaller


# ---------------------------------------------------------------------------- prediction and masks


@pytest.mark.parametrize("name,criterion,max_depth", [CASES[0], CASES[2], CASES[5]])
def test_predict_matches_sklearn(name, criterion, max_depth):
    X, y = _data(name)
    est, tree = _sk(name, criterion, max_depth), _tree(name, criterion, max_depth)
    np.testing.assert_array_equal(np.asarray(apply(tree, X)), est.apply(X))
    if criterion == "squared_error":
        np.testing.assert_allclose(np.asarray(predict(tree, X)), est.predict(X), rtol=1e-6)
    else:
        np.testing.assert_array_equal(np.asarray(predict(tree, X)), est.predict(X))
        np.testing.assert_allclose(np.asarray(predict_proba(tree, X)), est.predict_proba(X), rtol=1e-6)


def test_new_mask_does_not_recompile():
    X, _ = _data("digits")
    tree = _tree("digits", "gini", None)
    predict(tree, X[:50])
    size = _walk._cache_size()
    for a in (0.001, 0.01, 0.05):
        predict(tree, X[:50], node_mask=prune(tree, a))
    assert _walk._cache_size() == size


@given(st.floats(0.0, 0.1))
def test_threshold_rounding_keeps_float32_decisions(t):
    # predict compares in float32; the float32 threshold must split float32 inputs exactly as float64 does.
    r = threshold_f32(np.array([t]))[0]
    assert r.dtype == np.float32 and float(r) <= t < float(np.nextafter(r, np.float32(np.inf)))


def _random_mask(tree, collapse):
    """Valid mask from a per-node "collapse here" choice, walked top-down."""
    mask = np.zeros(tree.left.shape[0], bool)
    stack = [0]
    while stack:
        i = stack.pop()
        mask[i] = True
        if tree.left[i] != -1 and not collapse[i]:
            stack += [tree.left[i], tree.right[i]]
    return mask


@given(st.lists(st.booleans(), min_size=89, max_size=89), st.sampled_from([("digits", "gini", 6), ("diabetes", "squared_error", 6)]))
def test_compact_predicts_like_mask(bits, case):
    tree = _tree(*case)
    X, _ = _data(case[0])
    collapse = np.resize(np.array(bits) & (np.arange(len(bits)) % 3 == 0), tree.left.shape[0])
    mask = _random_mask(tree, collapse)
    small = compact(tree, mask)
    validate_tree(small)
    assert n_active(small) == n_active(tree, mask) and n_leaves(small) == n_leaves(tree, mask)
    assert depth(small) == depth(tree, mask)
    np.testing.assert_array_equal(np.asarray(predict(small, X)), np.asarray(predict(tree, X, node_mask=mask)))
    np.testing.assert_array_equal(compact(small, full_mask(small)).left, small.left)


def test_tree_is_a_pytree():
    tree = _tree("iris", "gini", None)
    assert len(jax.tree.leaves(tree)) == len(DecisionTree._fields)
    doubled = jax.tree.map(lambda a: a, tree)
    assert isinstance(doubled, DecisionTree)


# ---------------------------------------------------------------------------- reduced-error pruning


def _all_prunings(tree):
    """Every valid mask of a small tree (brute force)."""

    def sub(i):
        if tree.left[i] == -1:
            return [frozenset([i])]
        out = [frozenset([i])]
        for a, b in itertools.product(sub(tree.left[i]), sub(tree.right[i])):
            out.append(frozenset([i]) | a | b)
        return out

    for keep in sub(0):
        mask = np.zeros(tree.left.shape[0], bool)
        mask[list(keep)] = True
        yield mask


@pytest.mark.parametrize("seed", [0, 1])
def test_reduced_error_prune_is_smallest_best_subtree(seed):
    X, y = _data("digits")
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(y))
    fit, val = idx[:600], idx[600:700]
    tree = fit_tree(X[fit], y[fit], criterion="gini", max_depth=4)
    mask = reduced_error_prune(tree, X[val], y[val])
    validate_mask(tree, mask)

    def err(m):
        return int((np.asarray(predict(tree, X[val], node_mask=m)) != y[val]).sum())

    # Reduced-error pruning returns the smallest subtree with the least validation error (Esposito et al. 1997).
    results = [(err(m), int(m.sum())) for m in _all_prunings(tree)]
    assert (err(mask), int(mask.sum())) == min(results)


def test_reduced_error_prune_regression_and_training_data():
    X, y = _data("diabetes")
    tree = fit_tree(X[:300], y[:300], criterion="squared_error", max_depth=6)
    mask = reduced_error_prune(tree, X[300:], y[300:])

    def sse(m):
        return float(((np.asarray(predict(tree, X[300:], node_mask=m), np.float64) - y[300:]) ** 2).sum())

    assert sse(mask) <= sse(full_mask(tree)) * (1 + 1e-6) and mask.sum() < mask.size
    start = prune(tree, 20.0)
    assert not (reduced_error_prune(tree, X[300:], y[300:], node_mask=start) & ~start).any()
    Xc, yc = _data("iris")
    pure = fit_tree(Xc, yc, criterion="gini")
    assert reduced_error_prune(pure, Xc, yc).all()  # a pure tree makes no training errors: nothing to cut


def test_select_ccp_alpha_is_best_on_validation():
    X, y = _data("breast_cancer")
    tree = fit_tree(X[:350], y[:350], criterion="gini")
    a = select_ccp_alpha(tree, X[350:], y[350:])

    def acc(alpha):
        return float((np.asarray(predict(tree, X[350:], node_mask=prune(tree, alpha))) == y[350:]).mean())

    alphas, _ = cost_complexity_path(tree)
    assert acc(a) == max(acc(max(b, 0.0)) for b in alphas)
    assert a in np.maximum(alphas, 0.0)


# ---------------------------------------------------------------------------- growing trees


@pytest.mark.parametrize(
    "name,criterion,kw",
    [("digits", "gini", dict(max_depth=3)), ("digits", "entropy", dict(max_depth=3)), ("diabetes", "squared_error", dict(max_depth=3))],
)
def test_fit_tree_equals_sklearn(name, criterion, kw):
    X, y = _data(name)
    ours = fit_tree(X, y, criterion=criterion, **kw)
    ref = from_sklearn(_sk(name, criterion, kw["max_depth"]))
    _same_arrays(ours, ref)
    np.testing.assert_allclose(ours.value, ref.value, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.impurity, ref.impurity, rtol=0, atol=1e-9)


def test_fit_tree_equals_sklearn_when_split_choice_has_no_ties():
    # scikit-learn breaks ties between features in a random order: where six random_states give the same
    # tree there is (very likely) no tie, and our lowest-feature tie rule must give that tree too.
    compared = 0
    kw = dict(max_depth=4, min_samples_leaf=5)
    for seed, criterion in itertools.product(range(3), ["gini", "entropy", "squared_error"]):
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(300, 5))
        noise = 0.5 * rng.normal(size=300)
        if criterion == "squared_error":
            y, cls = X[:, 0] + np.sin(X[:, 1]) + noise, DecisionTreeRegressor
        else:
            y, cls = (X[:, 0] + X[:, 1] ** 2 + noise > 1).astype(int) + (X[:, 2] > 1), DecisionTreeClassifier
        refs = [from_sklearn(cls(criterion=criterion, random_state=r, **kw).fit(X, y)) for r in range(6)]
        if all(r.left.shape == refs[0].left.shape and (r.feature == refs[0].feature).all() for r in refs):
            ours = fit_tree(X, y, criterion=criterion, **kw)
            _same_arrays(ours, refs[0])
            np.testing.assert_allclose(ours.impurity, refs[0].impurity, rtol=0, atol=1e-9)
            compared += 1
    assert compared >= 5


def test_fit_tree_deep_accuracy_close_to_sklearn():
    X, y = _data("breast_cancer")
    ours = fit_tree(X[:400], y[:400], criterion="entropy")
    est = DecisionTreeClassifier(criterion="entropy", random_state=0).fit(X[:400], y[:400])
    pred = np.asarray(predict(ours, X))
    assert abs(float((pred[400:] == y[400:]).mean()) - est.score(X[400:], y[400:])) < 0.05
    assert (pred[:400] == y[:400]).all()


# ---------------------------------------------------------------------------- bad inputs


def _small():
    return fit_tree([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1], criterion="entropy", max_depth=2)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda t: t._replace(left=np.array([1, 0, -1]), right=np.array([2, 2, -1])), r"root node 0 is a child of node 1"),
        (lambda t: t._replace(right=np.array([2, -1, 7])), r"'right': node 2 has out-of-range child 7"),
        (lambda t: t._replace(right=np.array([2, -1, 1]), left=np.array([1, -1, -1])), r"node 2 has exactly one child"),
        (lambda t: t._replace(left=np.array([1, 2, -1]), right=np.array([2, 0, -1])), r"root node 0 is a child"),
        (lambda t: t._replace(left=np.array([1, -1, 1]), right=np.array([2, -1, 1])), r"node 2: left and right"),
        (lambda t: t._replace(impurity=np.zeros(4)), r"'impurity' has shape \(4,\)"),
        (lambda t: t._replace(value=np.zeros((3, 3))), r"'value' must have shape \(3, 2\)"),
        (lambda t: t._replace(left=np.array([1.0, -1.0, -1.0])), r"'left' must be integer"),
    ],
)
def test_invalid_tree(change, match):
    tree = fit_tree([[0.0], [1.0]], [0, 1], criterion="gini")
    with pytest.raises(PruningError, match=match):
        validate_tree(change(tree))


def _manual(left, right):
    """A classifier tree with the given children and placeholder node statistics."""
    left, right = np.array(left), np.array(right)
    n = left.shape[0]
    return DecisionTree(
        feature=np.where(left == -1, -2, 0), threshold=np.where(left == -1, -2.0, 0.5), left=left, right=right,
        value=np.full((n, 2), 0.5), n_samples=np.ones(n, np.int64), weighted_n_samples=np.ones(n),
        impurity=np.zeros(n), classes=np.array([0, 1]),
    )  # fmt: skip


def test_invalid_tree_reachable_twice_cycle_orphan():
    validate_tree(_manual([1, 3, -1, -1, -1], [2, 4, -1, -1, -1]))
    with pytest.raises(PruningError, match="node 3 is reachable twice"):
        validate_tree(_manual([1, 3, 3, -1, -1], [2, 4, 4, -1, -1]))
    with pytest.raises(PruningError, match="node 3 is not reachable from the root"):
        validate_tree(_manual([1, -1, -1, 4, -1, -1], [2, -1, -1, 5, -1, -1]))
    # a cycle away from the root: 3 -> 4 -> 3, unreachable from node 0
    with pytest.raises(PruningError, match="not reachable from the root"):
        validate_tree(_manual([1, -1, -1, 4, 3, -1, -1], [2, -1, -1, 5, 6, -1, -1]))
    # a cycle through the root: 0 -> 1 -> 0
    with pytest.raises(PruningError, match="root node 0 is a child of node 1"):
        validate_tree(_manual([1, 0, -1], [2, 2, -1]))
    with pytest.raises(PruningError, match="node 5 has out-of-range child -3"):
        validate_tree(_manual([1, -1, -1, -1, -1, -3], [2, -1, -1, -1, -1, -1]))


def test_invalid_masks():
    tree = _tree("iris", "gini", 3)
    X, _ = _data("iris")
    good = full_mask(tree)
    leaf_child = int(tree.left[tree.left[0]]) if tree.left[tree.left[0]] != -1 else int(tree.left[tree.right[0]])
    cases = [
        (good[:-1], r"shape \(\d+,\); the tree has \d+ nodes"),
        (good.astype(int), "boolean"),
        (np.where(np.arange(good.size) == 0, False, good), "prunes the root"),
        (np.where(np.arange(good.size) == tree.left[0], False, good), "exactly one child of node 0"),
        (np.isin(np.arange(good.size), [0, leaf_child]), "child of pruned node"),
    ]
    for mask, match in cases:
        with pytest.raises(PruningError, match=match):
            predict(tree, X, node_mask=mask)
        with pytest.raises(PruningError, match=match):
            compact(tree, mask)


def test_bad_inputs_elsewhere():
    tree = _small()
    with pytest.raises(PruningError, match="X must be a 2-D"):
        predict(tree, np.zeros(3))
    with pytest.raises(PruningError, match="splits on feature 0"):
        predict(tree, np.zeros((2, 0)))
    with pytest.raises(PruningError, match="NaN"):
        predict(tree, np.full((1, 1), np.nan))
    with pytest.raises(PruningError, match="y_val"):
        reduced_error_prune(tree, np.zeros((3, 1)), np.zeros(2))
    with pytest.raises(PruningError, match="criterion"):
        fit_tree([[0.0]], [0], criterion="mse")
    with pytest.raises(PruningError, match="max_depth"):
        fit_tree([[0.0]], [0], criterion="gini", max_depth=0)
    with pytest.raises(PruningError, match="not a fitted"):
        from_sklearn(DecisionTreeClassifier())
    multi = DecisionTreeRegressor(max_depth=1).fit([[0.0], [1.0]], [[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(PruningError, match="n_outputs=2"):
        from_sklearn(multi)
    with pytest.raises(PruningError, match="predict_proba needs a classifier"):
        predict_proba(fit_tree([[0.0], [1.0]], [0.5, 1.5], criterion="squared_error"), [[0.0]])


# ---------------------------------------------------------------------------- experiment entry point


@pytest.mark.parametrize("method,alpha", [("none", "auto"), ("ccp", "auto"), ("ccp", "0.01"), ("reduced_error", "auto")])
def test_run_tree(method, alpha):
    r = run_tree({"dataset": "breast_cancer", "method": method, "ccp_alpha": alpha, "max_depth": 5, "seed": 1})
    keys = {"dataset", "model", "method", "test_accuracy", "dense_test_accuracy", "nodes_total", "nodes_final",
            "leaves_total", "leaves_final", "sparsity", "seed", "wall_s", "kind", "schema_version",
            "split_criterion"}  # fmt: skip
    assert keys <= set(r) and r["model"] == "decision_tree" and r["method"] == method
    assert r["sparsity"] == pytest.approx(1 - r["nodes_final"] / r["nodes_total"])
    assert r["nodes_final"] == 2 * r["leaves_final"] - 1 and 0.8 < r["test_accuracy"] <= 1.0
    if method == "none":
        assert r["sparsity"] == 0.0 and r["test_accuracy"] == r["dense_test_accuracy"]


def test_tree_digits_config_runs_and_bad_config():
    spec = importlib.util.spec_from_file_location("tree_digits", pathlib.Path(__file__).parents[1] / "experiments/configs/tree_digits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    assert config.kind == "tree"
    config.max_depth = 6
    config.ccp_alpha = 0.002  # the field accepts a float in place of 'auto'
    r = run_tree(config)
    assert r["dataset"] == "digits" and r["nodes_final"] <= r["nodes_total"]
    for field, bad in [("dataset", "mnist"), ("method", "magic"), ("ccp_alpha", "-1"), ("max_depth", 0), ("validation_fraction", 1.5)]:
        with pytest.raises(ConfigError, match=field):
            run_tree({field: bad})
    with pytest.raises(ConfigError, match="validation_fraction must be > 0"):
        run_tree({"method": "reduced_error", "validation_fraction": 0.0})
