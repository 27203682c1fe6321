"""How far grouped training drifts from ``fit``: LeNet-300-100 on Fashion-MNIST, one epoch of Adam
(batch 32, the default validation split), ``--runs`` seeds trained one by one with
``jaxprune.train.fit`` and as one group with ``fit_group`` (``scan``, and ``vmap`` with each
``--vmap-sizes`` runs per program). Prints one JSON line: whether ``scan`` is bit-identical, and the
largest absolute parameter difference of each ``vmap`` setting (docs/vmapped.md).

Usage: python scripts/vmap_drift.py [--runs 2] [--vmap-sizes 2 8] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
import optax

from jaxprune import data as jdata
from jaxprune.models import get_model, init_params
from jaxprune.train.group import fit_group
from jaxprune.train import create_train_state, fit


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
               for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--vmap-sizes", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    x, y = jdata.load("fashion_mnist", "train")
    model, tx = get_model("lenet300", 10), optax.adam(1e-3)
    states = [create_train_state(init_params(model, jax.random.fold_in(jax.random.PRNGKey(s), 0),
                                             (1, 28, 28, 1)), tx) for s in range(args.runs)]
    seeds = list(range(args.runs))
    kw = dict(epochs=args.epochs, batch_size=32)
    seq = [fit(model, st, tx, x, y, seed=s, progress=False, **kw)[0] for st, s in zip(states, seeds)]
    scan = fit_group(model, states, tx, [(x, y)] * args.runs, seeds=seeds, **kw)
    same = all(np.array_equal(np.asarray(u), np.asarray(v)) for a, b in zip(seq, scan)
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    drift = {}
    for size in args.vmap_sizes:
        out = fit_group(model, states, tx, [(x, y)] * args.runs, seeds=seeds, strategy="vmap",
                        vmap_size=size, **kw)
        drift[str(size)] = max(_max_diff(a, b) for a, b in zip(seq, out))
    print(json.dumps({"scan_bit_identical": same, "vmap_max_abs_param_diff": drift,
                      "steps": int(seq[0].step), "runs": args.runs, "model": "lenet300",
                      "data": "fashion_mnist", "backend": jax.default_backend()}))


if __name__ == "__main__":
    main()
