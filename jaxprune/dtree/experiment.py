"""Decision-tree pruning experiment: grow a CART tree, prune it, report test accuracy and tree size.

``run_tree(config)`` is the library entry the ``jaxprune run`` command calls for ``kind='tree'``
configs (see ``experiments/configs/tree_digits.py``). ``python -m jaxprune.dtree.experiment`` prints
the comparison table in ``docs/trees.md``.

Protocol: a stratified test split (``test_fraction``) is held out; the rest is split again into a fit
part and a validation part (``validation_fraction``). The tree is always grown on the fit part, so for
one seed every method prunes the *same* dense tree and ``dense_test_accuracy`` is comparable across
methods. The validation part chooses ``ccp_alpha='auto'`` and drives reduced-error pruning.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from jaxprune.dtree.cart import CLASSIFICATION, fit_tree
from jaxprune.dtree.masks import full_mask, n_active, n_leaves
from jaxprune.dtree.predict import predict
from jaxprune.dtree.pruning import prune, reduced_error_prune, select_ccp_alpha
from jaxprune.config import field_or_default
from jaxprune.errors import ConfigError
from jaxprune.results_schema import SCHEMA_VERSION

DATASETS = ("digits", "breast_cancer")
METHODS = ("none", "ccp", "reduced_error")
_DEFAULTS = {
    "dataset": "digits",
    "seed": 0,
    "criterion": "gini",
    "max_depth": None,
    "min_samples_leaf": 1,
    "method": "ccp",
    "ccp_alpha": "auto",
    "validation_fraction": 0.2,
    "test_fraction": 0.25,
}


def _field(config: Any, name: str) -> Any:
    return field_or_default(config, name, _DEFAULTS, none_allowed=("max_depth",))


def _read_config(config: Any) -> dict:
    """The experiment fields with defaults filled in; ``ConfigError`` names a bad field."""
    c = {name: _field(config, name) for name in _DEFAULTS}
    if c["dataset"] not in DATASETS:
        raise ConfigError(f"config.dataset must be one of {DATASETS}, got {c['dataset']!r}")
    if c["method"] not in METHODS:
        raise ConfigError(f"config.method must be one of {METHODS}, got {c['method']!r}")
    if c["criterion"] not in CLASSIFICATION:
        raise ConfigError(f"config.criterion must be one of {CLASSIFICATION}, got {c['criterion']!r}")
    for name, low in (("seed", 0), ("min_samples_leaf", 1)):
        if isinstance(c[name], bool) or not isinstance(c[name], (int, np.integer)) or c[name] < low:
            raise ConfigError(f"config.{name} must be an integer >= {low}, got {c[name]!r}")
    md = c["max_depth"]
    if md is not None and (isinstance(md, bool) or not isinstance(md, (int, np.integer)) or md < 1):
        raise ConfigError(f"config.max_depth must be None or an integer >= 1, got {md!r}")
    for name in ("validation_fraction", "test_fraction"):
        if not isinstance(c[name], (int, float)) or not 0.0 <= c[name] < 1.0:
            raise ConfigError(f"config.{name} must be a number in [0, 1), got {c[name]!r}")
    if c["test_fraction"] == 0.0:
        raise ConfigError("config.test_fraction must be > 0 (test accuracy is the result)")
    alpha = c["ccp_alpha"]
    if c["method"] == "ccp" and alpha != "auto":
        try:  # a string from the command line ('0.01') is as good as a float
            alpha = float(alpha)
        except (TypeError, ValueError):
            raise ConfigError(f"config.ccp_alpha must be 'auto' or a number >= 0, got {alpha!r}") from None
        if not alpha >= 0.0:
            raise ConfigError(f"config.ccp_alpha must be 'auto' or a number >= 0, got {c['ccp_alpha']!r}")
        c["ccp_alpha"] = alpha
    needs_val = c["method"] == "reduced_error" or (c["method"] == "ccp" and alpha == "auto")
    if needs_val and c["validation_fraction"] == 0.0:
        raise ConfigError(f"config.validation_fraction must be > 0 for method={c['method']!r} (ccp_alpha={c['ccp_alpha']!r})")
    return c


def _load(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets  # bundled with scikit-learn: nothing is downloaded

    loader = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer}[name]
    return loader(return_X_y=True)


def run_tree(config: Any) -> dict:
    """Grow, prune and evaluate one decision tree; returns a flat result dict.

    ``config`` is an ``ml_collections.ConfigDict``, a dict or any object with the fields of
    ``experiments/configs/tree_digits.py`` (missing fields take those defaults).

    >>> r = run_tree({"dataset": "breast_cancer", "method": "reduced_error", "max_depth": 4})
    >>> r["model"], r["nodes_final"] <= r["nodes_total"]
    ('decision_tree', True)
    """
    from sklearn.model_selection import train_test_split

    c = _read_config(config)
    start = time.perf_counter()
    X, y = _load(c["dataset"])
    X_rest, X_test, y_rest, y_test = train_test_split(
        X, y, test_size=c["test_fraction"], random_state=c["seed"], stratify=y
    )
    if c["validation_fraction"] > 0:
        X_fit, X_val, y_fit, y_val = train_test_split(
            X_rest, y_rest, test_size=c["validation_fraction"], random_state=c["seed"], stratify=y_rest
        )
    else:
        X_fit, y_fit, X_val, y_val = X_rest, y_rest, X_rest[:0], y_rest[:0]
    tree = fit_tree(
        X_fit, y_fit, criterion=c["criterion"], max_depth=c["max_depth"], min_samples_leaf=c["min_samples_leaf"]
    )
    alpha = None
    if c["method"] == "none":
        mask = full_mask(tree)
    elif c["method"] == "ccp":
        alpha = select_ccp_alpha(tree, X_val, y_val) if c["ccp_alpha"] == "auto" else c["ccp_alpha"]
        mask = prune(tree, alpha)
    else:
        mask = reduced_error_prune(tree, X_val, y_val)
    test_acc = float(np.mean(np.asarray(predict(tree, X_test, node_mask=mask)) == y_test))
    dense_acc = float(np.mean(np.asarray(predict(tree, X_test)) == y_test))
    nodes_total, nodes_final = n_active(tree), n_active(tree, mask)
    return {
        "kind": "tree",
        "schema_version": SCHEMA_VERSION,
        "dataset": c["dataset"],
        "model": "decision_tree",
        "method": c["method"],
        # The impurity the tree was grown with (not a pruning criterion, unlike an nn run's `criterion`).
        "split_criterion": c["criterion"],
        "max_depth": c["max_depth"],
        "ccp_alpha": alpha,
        "test_accuracy": test_acc,
        "dense_test_accuracy": dense_acc,
        "nodes_total": nodes_total,
        "nodes_final": nodes_final,
        "leaves_total": n_leaves(tree),
        "leaves_final": n_leaves(tree, mask),
        "sparsity": 1.0 - nodes_final / nodes_total,
        "n_fit": int(y_fit.shape[0]),
        "n_val": int(y_val.shape[0]),
        "n_test": int(y_test.shape[0]),
        "seed": c["seed"],
        "wall_s": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> None:
    """Print a markdown table comparing methods (mean ± std over seeds)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=DATASETS)
    parser.add_argument("--criterion", default="gini", choices=CLASSIFICATION)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args(argv)
    rows = [("none", "none", "auto"), ("ccp (auto α)", "ccp", "auto"), ("reduced_error", "reduced_error", "auto")]
    print(f"{args.dataset}, criterion={args.criterion}, seeds={args.seeds} (mean ± std)\n")
    print("| method | test acc | dense test acc | leaves | nodes | node sparsity |")
    print("|---|---|---|---|---|---|")
    for label, method, alpha in rows:
        rs = [
            run_tree({"dataset": args.dataset, "criterion": args.criterion, "method": method, "ccp_alpha": alpha, "seed": s})
            for s in args.seeds
        ]

        def ms(key: str, fmt: str) -> str:
            v = np.array([r[key] for r in rs], np.float64)
            return f"{v.mean():{fmt}} ± {v.std():{fmt}}"

        print(
            f"| {label} | {ms('test_accuracy', '.3f')} | {ms('dense_test_accuracy', '.3f')} | "
            f"{ms('leaves_final', '.1f')} | {ms('nodes_final', '.1f')} | {ms('sparsity', '.3f')} |"
        )


if __name__ == "__main__":
    main()
