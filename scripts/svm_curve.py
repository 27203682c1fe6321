"""Accuracy–sparsity curves: pruned L2 linear SVM (jaxprune) vs scikit-learn's L1-penalised LinearSVC.

For each data set and seed (= the stratified 75/25 train/test split): features standardised on the
training split; a dense squared-hinge SVM (C, 1000 Adam steps) is pruned one-shot by magnitude or
saliency, weight-wise or feature-wise, with and without masked fine-tuning (``--finetune`` steps).
``LinearSVC(penalty='l1', loss='squared_hinge', dual=False)`` is fitted over a range of C on the same
features; for each of its fits, our SVM is pruned to *exactly* the same number of zero weights (and,
feature-wise, to the same number of used features), so the two are compared at equal sparsity.
Prints markdown tables (means over seeds). Usage: python scripts/svm_curve.py [--seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from jaxprune.svm import accuracy, features_used, finetune_svm, fit_svm, prune_svm
from jaxprune.svm.experiment import load_split

GRID = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
L1_CS = (0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.3, 1.0)
VARIANTS = [(st, cr) for st in ("weights", "features") for cr in ("magnitude", "saliency")]


def _l1_svc(X, y, C):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # tiny C: liblinear stops at max_iter
        return LinearSVC(penalty="l1", loss="squared_hinge", dual=False, C=C, max_iter=20000,
                         random_state=0).fit(X, y)


def _ours(dense, data, s, structure, criterion, ft, C, lr):
    """(one-shot test acc, fine-tuned test acc) at sparsity ``s`` of ``w``."""
    Xtr, Xte, ytr, yte = data
    p, m = prune_svm(dense, Xtr, ytr, s, criterion=criterion, structure=structure)
    tuned = finetune_svm(p, m, Xtr, ytr, steps=ft, C=C, lr=lr)
    return accuracy(p, Xte, yte), accuracy(tuned, Xte, yte)


def curve(dataset: str, seeds, C: float, steps: int, lr: float, ft: int):
    grid = np.zeros((len(seeds), len(GRID), len(VARIANTS), 2))
    pairs = np.zeros((len(seeds), len(L1_CS), 7))  # sparsity, feats, l1 acc, ours w os/ft, ours f ft, dense
    for i, seed in enumerate(seeds):
        data = load_split(dataset, seed)
        Xtr, Xte, ytr, yte = data
        dense = fit_svm(Xtr, ytr, C=C, steps=steps, lr=lr, seed=seed)
        for j, s in enumerate(GRID):
            for v, (st, cr) in enumerate(VARIANTS):
                grid[i, j, v] = _ours(dense, data, s, st, cr, ft, C, lr)
        n_feat = Xtr.shape[1]
        for j, c in enumerate(L1_CS):
            sk = _l1_svc(np.asarray(Xtr), ytr, c)
            zeros, used = int(np.sum(sk.coef_ == 0)), int(np.sum(np.any(sk.coef_ != 0, axis=0)))
            s = zeros / sk.coef_.size
            acc = float(np.mean(sk.predict(np.asarray(Xte)) == yte))
            w_os, w_ft = _ours(dense, data, s, "weights", "magnitude", ft, C, lr)
            # Same number of *input features* as the L1 model uses (ours then has more nonzero weights).
            p, m = prune_svm(dense, Xtr, ytr, (n_feat - used) / n_feat, structure="features")
            f_ft = accuracy(finetune_svm(p, m, Xtr, ytr, steps=ft, C=C, lr=lr), Xte, yte)
            assert features_used(p) <= used
            pairs[i, j] = (s, used, acc, w_os, w_ft, f_ft, accuracy(dense, Xte, yte))
    return grid.mean(axis=0), pairs


def _table(dataset, grid, pairs, seeds, ft) -> str:
    head = "| target sparsity | " + " | ".join(
        f"{st} {cr[:3]}{suffix}" for st, cr in VARIANTS for suffix in ("", f" +ft{ft}")) + " |"
    lines = [f"### {dataset}: pruned L2 SVM, test accuracy (mean over seeds {list(seeds)})", "", head,
             "|" + "---|" * (1 + 2 * len(VARIANTS))]
    for j, s in enumerate(GRID):
        lines.append(f"| {s:.2f} | " + " | ".join(f"{grid[j, v, k]:.3f}" for v in range(len(VARIANTS))
                                                  for k in (0, 1)) + " |")
    m = pairs.mean(axis=0)
    lines += ["", f"### {dataset}: L1 LinearSVC vs pruned L2 SVM at the same sparsity (dense L2 SVM: "
                  f"{m[0, 6]:.3f})", "",
              "| L1 C | sparsity of w | features used | L1-SVC acc | ours weights mag | "
              f"ours weights mag +ft{ft} | ours features mag +ft{ft} (same #features) |",
              "|---|---|---|---|---|---|---|"]
    for j, c in enumerate(L1_CS):
        r = m[j]
        lines.append(f"| {c:g} | {r[0]:.3f} | {r[1]:.1f} | {r[2]:.3f} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.3f} |")
    # ours (weights, mag, ft) minus L1, paired per seed and C; rounded: accuracies are float32 vs float64.
    diff = np.round(pairs[..., 4] - pairs[..., 2], 6)
    keep = pairs[..., 0] < 0.99  # the all-zero end of the L1 path says nothing about pruning
    lines += ["", f"Paired (seed, C) comparisons with sparsity < 0.99: ours +ft better in "
                  f"{int(np.sum(diff[keep] > 0))}, equal in {int(np.sum(diff[keep] == 0))}, worse in "
                  f"{int(np.sum(diff[keep] < 0))}; mean difference {diff[keep].mean():+.3f}.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "breast_cancer"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--C", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--finetune", type=int, default=300)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    print(f"L2 SVM: squared hinge, C={args.C}, {args.steps} Adam steps (lr {args.lr}, cosine); "
          f"fine-tuning {args.finetune} masked steps. 'mag' = magnitude, 'sal' = saliency.\n")
    for ds in args.datasets:
        grid, pairs = curve(ds, args.seeds, args.C, args.steps, args.lr, args.finetune)
        print(_table(ds, grid, pairs, args.seeds, args.finetune))
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
