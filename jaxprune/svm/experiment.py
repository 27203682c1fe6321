"""Linear-SVM pruning experiment: train dense, prune ``w``, optionally fine-tune, report test accuracy.

``run_svm(config)`` is the library entry the ``jaxprune run`` command calls for ``kind='svm'`` configs
(see ``experiments/configs/svm_digits.py``). ``scripts/svm_curve.py`` sweeps it into the
accuracy–sparsity table of ``docs/svm.md``.

Protocol: scikit-learn's bundled data set, one stratified train/test split (``TEST_FRACTION`` of the
samples, ``random_state=seed``); features standardised with the training split's mean and std; all
training (dense, fine-tuning) and the saliency gradients use the training split only.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from jaxprune.counts import check_sparsity_value
from jaxprune.config import field_or_default
from jaxprune.errors import ConfigError
from jaxprune.masks import summary
from jaxprune.results_schema import SCHEMA_VERSION
from jaxprune.svm.model import LOSSES, accuracy, fit_scaler, fit_svm, standardize
from jaxprune.svm.pruning import CRITERIA, STRUCTURES, features_used, finetune_svm, prune_svm

__all__ = ["DATASETS", "TEST_FRACTION", "load_split", "run_svm"]

DATASETS = ("digits", "breast_cancer")
TEST_FRACTION = 0.25
_DEFAULTS = {
    "dataset": "digits",
    "seed": 0,
    "C": 0.1,
    "loss": "squared_hinge",
    "steps": 1000,
    "learning_rate": 0.1,
    "criterion": "magnitude",
    "structure": "weights",
    "sparsity": 0.9,
    "finetune_steps": 300,
}


def _get(config: Any, name: str) -> Any:
    return field_or_default(config, name, _DEFAULTS)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _read_config(config: Any) -> dict:
    """The fields with defaults filled in; a bad value raises ``ConfigError`` naming the field."""
    c = {name: _get(config, name) for name in _DEFAULTS}
    for name, choices in (("dataset", DATASETS), ("loss", LOSSES), ("criterion", CRITERIA),
                          ("structure", STRUCTURES)):
        if c[name] not in choices:
            raise ConfigError(f"config field {name!r} must be one of {choices}, got {c[name]!r}")
    for name, low in (("seed", 0), ("steps", 1), ("finetune_steps", 0)):
        if not _is_int(c[name]) or c[name] < low:
            raise ConfigError(f"config field {name!r} must be an integer >= {low}, got {c[name]!r}")
    for name in ("C", "learning_rate"):
        v = c[name]
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not np.isfinite(v) or v <= 0:
            raise ConfigError(f"config field {name!r} must be a finite number > 0, got {v!r}")
    try:
        check_sparsity_value(c["sparsity"], "config field 'sparsity'")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return c


def load_split(dataset: str, seed: int) -> tuple[jax.Array, jax.Array, np.ndarray, np.ndarray]:
    """Standardised ``(X_train, X_test, y_train, y_test)`` of a bundled scikit-learn data set.

    >>> Xtr, Xte, ytr, yte = load_split('breast_cancer', 0)
    >>> Xtr.shape, Xte.shape
    ((426, 30), (143, 30))
    """
    from sklearn import datasets  # bundled with scikit-learn: nothing is downloaded
    from sklearn.model_selection import train_test_split

    if dataset not in DATASETS:
        raise ConfigError(f"config field 'dataset' must be one of {DATASETS}, got {dataset!r}")
    loader = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer}[dataset]
    X, y = loader(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=TEST_FRACTION, random_state=seed, stratify=y)
    scaler = fit_scaler(X_tr)  # training split only: the test set must not leak into the scaling
    return standardize(scaler, X_tr), standardize(scaler, X_te), y_tr.astype(np.int32), y_te.astype(np.int32)


def run_svm(config: Any) -> dict:
    """Train, prune, fine-tune and evaluate one linear SVM; returns a flat result dict.

    ``config`` is an ``ml_collections.ConfigDict``, a dict or an object with the fields of
    ``experiments/configs/svm_digits.py`` (missing fields take those defaults).

    >>> r = run_svm({'dataset': 'breast_cancer', 'sparsity': 0.5, 'structure': 'features'})
    >>> r['model'], r['features_used'], r['sparsity']
    ('linear_svm', 15, 0.5)
    """
    c = _read_config(config)
    start = time.perf_counter()
    X_tr, X_te, y_tr, y_te = load_split(c["dataset"], c["seed"])
    dense = fit_svm(X_tr, y_tr, C=c["C"], loss=c["loss"], steps=c["steps"], lr=c["learning_rate"],
                    seed=c["seed"])
    pruned, mask = prune_svm(dense, X_tr, y_tr, c["sparsity"], criterion=c["criterion"],
                             structure=c["structure"], C=c["C"], loss=c["loss"], lr=c["learning_rate"])
    final = pruned
    if c["finetune_steps"]:
        final = finetune_svm(pruned, mask, X_tr, y_tr, steps=c["finetune_steps"], C=c["C"], loss=c["loss"],
                             lr=c["learning_rate"])
    s = summary(final, include="w")  # the weights are pruned, never the biases
    return {
        "kind": "svm",
        "schema_version": SCHEMA_VERSION,
        "dataset": c["dataset"],
        "model": "linear_svm",
        # As for nn runs: `method` is what was done, `scorer` what ranked the weights.
        "method": "one_shot",
        "scorer": c["criterion"],
        "structure": c["structure"],
        "loss": c["loss"],
        "C": float(c["C"]),
        "target_sparsity": float(c["sparsity"]),
        "sparsity": s.prunable["sparsity"],
        "total_params": s.total["size"],
        "nonzero_params": s.total["nonzero"],
        "prunable_params": s.prunable["size"],
        "n_features": int(X_tr.shape[1]),
        "features_used": features_used(final),
        "dense_test_accuracy": accuracy(dense, X_te, y_te),
        "pruned_test_accuracy": accuracy(pruned, X_te, y_te),
        "test_accuracy": accuracy(final, X_te, y_te),
        "dense_train_accuracy": accuracy(dense, X_tr, y_tr),
        "train_accuracy": accuracy(final, X_tr, y_tr),
        "steps": c["steps"],
        "finetune_steps": c["finetune_steps"],
        "seed": c["seed"],
        "wall_s": time.perf_counter() - start,
    }
