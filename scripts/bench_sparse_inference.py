#!/usr/bin/env python
"""CPU latency of a magnitude-pruned MLP: dense jitted forward vs the sparse paths of jaxprune.quant.

    .venv/bin/python scripts/bench_sparse_inference.py            # ~2-3 min on 2 cores

Models: LeNet-300-100 (784-300-100-10) and a wide MLP (4096-4096-4096-10) with random weights; every
kernel is pruned to the target sparsity by an exact per-layer numpy magnitude threshold (biases stay
dense). For each sparsity x batch it times, after a compile and a warm-up call, the median of 20
calls (``block_until_ready``) of

* dense: ``jax.jit(sparse_mlp_apply)`` on the dense (zero-filled) kernels,
* bcoo (``sparse_ms``, the issue's BCOO path): the same function on ``to_bcoo(params)``, ``x @ W``,
* bcsr: the same function on ``to_bcsr(params)``, ``(W^T @ x^T)^T`` with JAX's CPU CSR kernel.

Budget guard (keeps the run < 3 min): a path whose single warm call takes > 0.25 s is timed over 5
calls instead of 20 (``reps`` says so); one taking > 2 s is timed once and skipped (``null``) at every
lower sparsity of that model and batch, where it can only be slower. One JSON line per case, then one
``crossover`` line: per model/batch/path, the lowest sparsity from which sparse beats dense at it and
at every higher sparsity measured, or "none up to 0.99".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.quant import sparse_mlp_apply, to_bcoo, to_bcsr

MODELS = {"lenet-300-100": (784, 300, 100, 10), "wide-4096": (4096, 4096, 4096, 10)}
PATHS = ("dense", "bcoo", "bcsr")
FEW_REPS_ABOVE_S, SKIP_ABOVE_S, FEW_REPS = 0.25, 2.0, 5


def magnitude_prune(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Zero exactly round(sparsity * n) weights of smallest |w| (numpy partition, no full sort)."""
    w = w.copy()
    k = int(round(sparsity * w.size))
    if k:
        w.ravel()[np.argpartition(np.abs(w).ravel(), k - 1)[:k]] = 0.0
    return w


def dense_weights(sizes: tuple[int, ...], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [((rng.standard_normal((a, b), np.float32) / np.sqrt(a)).astype(np.float32),
             (0.01 * rng.standard_normal(b)).astype(np.float32)) for a, b in zip(sizes, sizes[1:])]


def pruned_params(weights, sparsity: float) -> dict:
    return {"params": {f"Dense_{i}": {"kernel": magnitude_prune(k, sparsity), "bias": b}
                       for i, (k, b) in enumerate(weights)}}


def time_call(fn, *args, reps: int) -> tuple[float, int]:
    """Median wall time (s) of ``fn(*args)`` after compile + warm-up, and the number of timed calls."""
    jax.block_until_ready(fn(*args))  # compile
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))  # warm-up, also sizes the run
    first = time.perf_counter() - start
    if first > SKIP_ABOVE_S:
        return first, 1
    n = reps if first <= FEW_REPS_ABOVE_S else FEW_REPS
    times = []
    for _ in range(n):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times), n


def crossover(rows: list[dict], key: str) -> float | str:
    """Lowest sparsity from which ``key`` beats dense at it and every higher measured sparsity."""
    best = "none up to %g" % max(r["sparsity"] for r in rows)
    for row in sorted(rows, key=lambda r: -r["sparsity"]):
        if row[key] is None or row[key] <= 1.0:
            break
        best = row["sparsity"]
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--sparsities", default="0.5,0.8,0.9,0.95,0.99")
    parser.add_argument("--batches", default="1,256")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args(argv)
    sparsities = sorted(float(s) for s in args.sparsities.split(","))
    batches = [int(b) for b in args.batches.split(",")]
    print(f"# jax {jax.__version__}, {jax.devices()[0].device_kind}, reps {args.reps}",
          file=sys.stderr)

    apply = jax.jit(sparse_mlp_apply)
    summary = {}
    t0 = time.perf_counter()
    for model in args.models.split(","):
        sizes = MODELS[model]
        weights = dense_weights(sizes)
        rng = np.random.default_rng(1)
        inputs = {b: jnp.asarray(rng.standard_normal((b, sizes[0]), np.float32)) for b in batches}
        skipped: set[tuple[int, str]] = set()
        rows = []
        # Highest sparsity first: once a sparse path is too slow, every lower sparsity is slower.
        for sparsity in reversed(sparsities):
            dense = jax.tree.map(jnp.asarray, pruned_params(weights, sparsity))
            trees = {"dense": dense, "bcoo": to_bcoo(dense), "bcsr": to_bcsr(dense)}
            for batch in batches:
                ms, reps = {}, {}
                for path in PATHS:
                    if (batch, path) in skipped:
                        ms[path] = reps[path] = None
                        continue
                    seconds, reps[path] = time_call(apply, trees[path], inputs[batch], reps=args.reps)
                    ms[path] = round(1e3 * seconds, 4)
                    if seconds > SKIP_ABOVE_S and path != "dense":
                        skipped.add((batch, path))
                speed = {p: (round(ms["dense"] / ms[p], 3) if ms[p] else None) for p in PATHS[1:]}
                rows.append({"model": model, "sparsity": sparsity, "batch": batch,
                             "dense_ms": ms["dense"], "sparse_ms": ms["bcoo"],
                             "speedup": speed["bcoo"], "bcsr_ms": ms["bcsr"],
                             "bcsr_speedup": speed["bcsr"], "reps": reps})
        for row in sorted(rows, key=lambda r: (r["batch"], r["sparsity"])):
            print(json.dumps(row), flush=True)
        for batch in batches:
            group = [r for r in rows if r["batch"] == batch]
            summary[f"{model}/batch={batch}"] = {"bcoo": crossover(group, "speedup"),
                                                 "bcsr": crossover(group, "bcsr_speedup")}
    print(json.dumps({"crossover": summary, "total_s": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
