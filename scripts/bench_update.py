"""Benchmark: the cost of a mask-update step (score + select + apply) relative to a dense train step.

For LeNet-300-100 (batch 128) and a 5-layer 1024-wide MLP (batch 256), times in one run, median of
repeats after warm-up: a dense Adam train step, and the same step through jaxprune.pruning with a
schedule that recomputes the magnitude masks at 90 % sparsity on every step, layerwise (uniform) and
global. Prints one JSON line with the worse of layerwise and global per model:
{"lenet300_update_vs_step": ..., "wide_mlp_update_vs_step": ...}.

``--malloc keep`` (default, as the ``jaxprune`` command runs): glibc keeps memory freed by each step's
buffers for reuse (``jaxprune.hostmem.keep_freed_memory``); ``--malloc default``: glibc's own settings,
where the global update's 3 MB of scratch is page-faulted in again on every step.

Usage: python scripts/bench_update.py [--steps 60] [--malloc keep|default]
"""

import argparse
import json
import statistics

import jax
import optax

from jaxprune.hostmem import keep_freed_memory
from jaxprune.models import MLP, init_params
from jaxprune.recipes import mask_update
from jaxprune.train import constant, create_train_state, make_train_step, pruning

from bench_step import _timer  # same timing loop (scripts/ is on sys.path when run as a script)


def _median_step(step, state, x, y, n):
    state, _ = _timer(step, state, x, y, 5)  # warm-up
    return statistics.median(_timer(step, state, x, y, n)[1])


def case(features, in_dim, batch, steps):
    model = MLP(features)
    v = init_params(model, jax.random.PRNGKey(0), (1, in_dim))
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, in_dim))
    y = jax.random.randint(jax.random.PRNGKey(2), (batch,), 0, features[-1])
    txs = {"dense": optax.adam(1e-3)}
    for alloc in ("uniform", "global"):
        txs[alloc] = pruning(optax.adam(1e-3), update_masks=mask_update("magnitude", allocation=alloc),
                             schedule=constant(0.9, every=1))
    steps_fns = {k: (make_train_step(model, tx), create_train_state(v, tx)) for k, tx in txs.items()}
    out = {}
    for rep in range(3):  # interleave to share machine noise
        for k, (fn, st) in steps_fns.items():
            out.setdefault(k, []).append(_median_step(fn, st, x, y, steps))
    med = {k: statistics.median(v) for k, v in out.items()}
    return med


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--malloc", choices=("keep", "default"), default="keep",
                    help="keep: jaxprune.hostmem.keep_freed_memory() first (as the jaxprune command); "
                         "default: glibc's own settings")
    args = ap.parse_args()
    kept = keep_freed_memory() if args.malloc == "keep" else False
    res = {}
    for name, (features, d, b) in {"lenet300": ((300, 100, 10), 784, 128),
                                   "wide_mlp": ((1024,) * 4 + (10,), 1024, 256)}.items():
        med = case(features, d, b, args.steps)
        res[f"{name}_update_vs_step"] = round(max(med["uniform"], med["global"]) / med["dense"], 3)
        res[f"{name}_layerwise_vs_step"] = round(med["uniform"] / med["dense"], 3)
        res[f"{name}_global_vs_step"] = round(med["global"] / med["dense"], 3)
        res[f"{name}_dense_ms"] = round(1e3 * med["dense"], 3)
    res["device"] = jax.devices()[0].platform
    res["malloc"] = "keep" if kept else "default"
    print(json.dumps(res))


if __name__ == "__main__":
    main()
