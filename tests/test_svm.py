"""Linear SVM (jaxprune.svm): training, pruning, masked fine-tuning, saliency gradients, the experiment."""

import importlib
import importlib.util
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp
from jaxprune.errors import ConfigError, DataError, PruningError
from jaxprune.svm import (
    LinearSVM,
    accuracy,
    features_used,
    finetune_svm,
    fit_scaler,
    fit_svm,
    objective,
    ovr_targets,
    predict,
    prune_svm,
    standardize,
    svm_grads,
    svm_masks,
    svm_scores,
)
from jaxprune.svm.experiment import load_split, run_svm
from jaxprune.svm.model import _train

ROOT = pathlib.Path(__file__).parents[1]


@pytest.fixture(scope="module")
def digits():
    Xtr, Xte, ytr, yte = load_split("digits", 0)
    return Xtr, Xte, ytr, yte, fit_svm(Xtr, ytr)


@pytest.fixture(scope="module")
def cancer():
    Xtr, Xte, ytr, yte = load_split("breast_cancer", 0)
    return Xtr, Xte, ytr, yte, fit_svm(Xtr, ytr)


def _nonzero_rows(w):
    return np.any(np.asarray(w) != 0, axis=1)


def test_dense_accuracy(digits, cancer):
    Xtr, Xte, ytr, yte, p = digits
    assert p.w.shape == (64, 10) and p.b.shape == (10,)
    assert accuracy(p, Xte, yte) > 0.9
    Xtr, Xte, ytr, yte, p = cancer
    assert p.w.shape == (30, 1), "binary problems use one column, as LinearSVC's coef_"
    assert accuracy(p, Xte, yte) > 0.93


def test_hinge_loss_trains(cancer):
    Xtr, Xte, ytr, yte, _ = cancer
    assert accuracy(fit_svm(Xtr, ytr, loss="hinge"), Xte, yte) > 0.93


def test_scaler_uses_training_statistics():
    X = np.array([[1.0, 3.0, 7.0], [3.0, 5.0, 7.0]])
    s = fit_scaler(X)
    Z = standardize(s, X)
    np.testing.assert_allclose(np.asarray(Z), [[-1, -1, 0], [1, 1, 0]], atol=1e-6)
    with pytest.raises(DataError, match="features"):
        standardize(s, np.ones((2, 4)))


def test_ovr_targets_and_predict():
    assert ovr_targets(np.array([1, 0]), 1).tolist() == [[1.0], [-1.0]]
    p = LinearSVM(jnp.eye(3), jnp.zeros(3))
    assert predict(p, jnp.array([[0.0, 2.0, 1.0]])).tolist() == [1]


@pytest.mark.parametrize("s", [0.0, 0.1, 1 / 3, 0.5, 0.9, 0.95, 1.0])
def test_exact_sparsity_of_w(digits, s):
    Xtr, _, ytr, _, dense = digits
    for criterion in ("magnitude", "saliency"):
        p, m = prune_svm(dense, Xtr, ytr, s, criterion=criterion)
        chex.assert_trees_all_equal_structs(m, dense)
        assert m.w.dtype == jnp.bool_ and bool(jnp.all(m.b)), "b is never pruned"
        assert int(np.sum(~np.asarray(m.w))) == jp.num_pruned(s, 640)
        assert int(np.sum(np.asarray(p.w) == 0)) == jp.num_pruned(s, 640)
        assert jp.summary(p, include="w").prunable["sparsity"] == pytest.approx(jp.num_pruned(s, 640) / 640)


@pytest.mark.parametrize("s", [0.25, 0.5, 0.9])
def test_feature_structure_removes_whole_rows(digits, s):
    Xtr, _, ytr, _, dense = digits
    for criterion in ("magnitude", "saliency"):
        p, m = prune_svm(dense, Xtr, ytr, s, criterion=criterion, structure="features", finetune_steps=20)
        mw = np.asarray(m.w)
        assert np.all(mw.all(axis=1) | ~mw.any(axis=1)), "a feature row is kept or removed for all classes"
        assert int(np.sum(~mw.all(axis=1))) == jp.num_pruned(s, 64)
        assert features_used(p) == 64 - jp.num_pruned(s, 64)
        assert np.array_equal(_nonzero_rows(p.w), mw.all(axis=1))


def test_masks_follow_the_scores():
    scores = LinearSVM(jnp.array([[1.0, 9.0], [2.0, 8.0], [5.0, 0.5]]), jnp.zeros(2))
    assert svm_masks(scores, 0.5).w.tolist() == [[False, True], [False, True], [True, False]]
    assert svm_masks(scores, 1 / 3, structure="features").w.tolist() == [[True] * 2, [True] * 2, [False] * 2]


@pytest.mark.parametrize("structure", ["weights", "features"])
def test_finetune_keeps_pruned_weights_at_zero_and_helps(digits, structure):
    Xtr, _, ytr, _, dense = digits
    Y = ovr_targets(ytr, 10)
    pruned, m = prune_svm(dense, Xtr, ytr, 0.9, structure=structure)
    tuned = finetune_svm(pruned, m, Xtr, ytr, steps=300)
    w = np.asarray(tuned.w)
    assert np.all(w[~np.asarray(m.w)] == 0.0), "pruned weights must stay exactly zero"
    assert not np.array_equal(w, np.asarray(pruned.w)), "kept weights were trained"
    assert accuracy(tuned, Xtr, ytr) >= accuracy(pruned, Xtr, ytr)
    assert float(objective(tuned, Xtr, Y, 0.1)) < float(objective(pruned, Xtr, Y, 0.1))
    # prune_svm(finetune_steps=...) is the same two steps in one call.
    both, m2 = prune_svm(dense, Xtr, ytr, 0.9, structure=structure, finetune_steps=300)
    assert np.array_equal(np.asarray(m2.w), np.asarray(m.w))
    np.testing.assert_allclose(np.asarray(both.w), w, atol=1e-6)


def test_new_mask_C_or_steps_does_not_recompile(digits):
    Xtr, _, ytr, _, dense = digits
    _, m = prune_svm(dense, Xtr, ytr, 0.5)
    finetune_svm(dense, m, Xtr, ytr, steps=7, C=0.1)
    before = _train._cache_size()
    _, m = prune_svm(dense, Xtr, ytr, 0.8, structure="features")
    finetune_svm(dense, m, Xtr, ytr, steps=9, C=2.0, lr=0.01)
    assert _train._cache_size() == before


def _numpy_data_loss(w, b, X, Y, loss):
    slack = np.maximum(0.0, 1.0 - Y * (X @ w + b[None, :]))
    return np.mean(np.sum(slack**2 if loss == "squared_hinge" else slack, axis=1))


@pytest.mark.parametrize("loss, n_classes", [("squared_hinge", 3), ("squared_hinge", 2), ("hinge", 3)])
def test_saliency_gradients_match_finite_differences(loss, n_classes):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 4))
    y = np.arange(12) % n_classes
    out = 1 if n_classes == 2 else n_classes
    w, b = rng.normal(size=(4, out)) * 0.5, rng.normal(size=out) * 0.1
    Y = np.asarray(ovr_targets(y, out), np.float64)
    g = svm_grads(LinearSVM(jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)), X, y, loss)
    eps = 1e-6  # float64 central differences of an independent numpy loss
    fd_w = np.zeros_like(w)
    for idx in np.ndindex(*w.shape):
        d = np.zeros_like(w)
        d[idx] = eps
        fd_w[idx] = (_numpy_data_loss(w + d, b, X, Y, loss) - _numpy_data_loss(w - d, b, X, Y, loss)) / (2 * eps)
    fd_b = np.array([(_numpy_data_loss(w, b + e, X, Y, loss) - _numpy_data_loss(w, b - e, X, Y, loss)) / (2 * eps)
                     for e in np.eye(out) * eps])
    np.testing.assert_allclose(np.asarray(g.w), fd_w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(g.b), fd_b, rtol=1e-4, atol=1e-5)
    s = svm_scores(LinearSVM(jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)), X, y,
                   criterion="saliency", loss=loss)
    np.testing.assert_allclose(np.asarray(s.w), np.abs(w * fd_w), rtol=1e-4, atol=1e-5)


def test_saliency_is_magnitude_squared_at_the_optimum(cancer):
    # Stationarity of the L2 objective: grad(data loss) = -w / (C n), so |w g| = w^2 / (C n).
    Xtr, _, ytr, _, _ = cancer
    p = fit_svm(Xtr, ytr, steps=3000)
    g = svm_grads(p, Xtr, ytr)
    np.testing.assert_allclose(np.asarray(g.w), -np.asarray(p.w) / (0.1 * Xtr.shape[0]), atol=2e-4)


def test_bad_arguments():
    X, y = np.ones((4, 2)), np.array([0, 1, 0, 1])
    p = LinearSVM(jnp.ones((2, 1)), jnp.zeros(1))
    bad = [({"loss": "log"}, "loss"), ({"C": 0.0}, "C"), ({"lr": -1.0}, "lr"), ({"steps": 1.5}, "steps")]
    for kwargs, match in bad:
        with pytest.raises(PruningError, match=match):
            fit_svm(X, y, **kwargs)
    with pytest.raises(DataError, match="y must have shape"):
        fit_svm(X, y[:3])
    with pytest.raises(DataError, match="integer class"):
        fit_svm(X, y.astype(float))
    with pytest.raises(PruningError, match="criterion"):
        prune_svm(p, X, y, 0.5, criterion="random")
    with pytest.raises(PruningError, match="structure"):
        prune_svm(p, X, y, 0.5, structure="blocks")
    with pytest.raises(PruningError, match="sparsity"):
        prune_svm(p, X, y, 1.5)
    with pytest.raises(PruningError, match="needs the training data"):
        svm_scores(p, criterion="saliency")


def _config():
    spec = importlib.util.spec_from_file_location("svm_digits", ROOT / "experiments/configs/svm_digits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def test_run_svm_result_fields():
    config = _config()
    assert config.kind == "svm"
    config.structure, config.sparsity, config.finetune_steps = "features", 0.75, 100
    r = run_svm(config)
    assert r["dataset"] == "digits" and r["model"] == "linear_svm" and r["method"] == "one_shot"
    assert r["scorer"] == "magnitude" and r["kind"] == "svm" and r["schema_version"] >= 1
    assert r["target_sparsity"] == 0.75 and r["sparsity"] == pytest.approx(0.75)
    assert r["total_params"] == 650 and r["nonzero_params"] == 160 + 10
    assert r["features_used"] == 16 and r["seed"] == 0 and r["wall_s"] > 0
    for key in ("dense_test_accuracy", "pruned_test_accuracy", "test_accuracy"):
        assert 0.0 <= r[key] <= 1.0
    assert r["dense_test_accuracy"] > 0.9 and r["test_accuracy"] >= r["pruned_test_accuracy"]


def test_train_and_evaluate_dispatches_svm(tmp_path):
    from jaxprune.experiment import train_and_evaluate

    config = _config()
    config.dataset, config.criterion, config.sparsity, config.steps = "breast_cancer", "saliency", 0.5, 300
    r = train_and_evaluate(config, tmp_path)
    assert (tmp_path / "result.json").exists() and r["nonzero_params"] == 15 + 1


@pytest.mark.parametrize("field, bad", [
    ("dataset", "mnist"), ("loss", "logistic"), ("criterion", "random"), ("structure", "blocks"),
    ("sparsity", 1.5), ("sparsity", "half"), ("C", 0), ("C", -1.0), ("learning_rate", float("nan")),
    ("steps", 0), ("steps", 10.5), ("finetune_steps", -1), ("seed", -3), ("seed", True),
])
def test_bad_config_names_the_field(field, bad):
    with pytest.raises(ConfigError, match=field):
        run_svm({field: bad})
