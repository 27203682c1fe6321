"""Benchmark: 8 LeNet-300-100 runs trained one by one (``jaxprune.train.fit``) vs as one group
(``jaxprune.train.group.fit_group``), in one process.

Each run takes ``--steps`` Adam steps of batch ``--batch`` on Fashion-MNIST (the first steps x batch
training images, found by ``jaxprune.data``; random data of that shape when the files are absent), so
one epoch is exactly ``--steps`` steps. ``--axis seed`` (default): 8 seeds, dense Adam.
``--axis sparsity``: one seed, 8 magnitude masks from 10 % to 80 % sparsity, masked Adam (the
fine-tuning phase of ``one_shot``).

Paths, interleaved, median of ``--repeats``: ``one_by_one`` (``fit`` per run, as
``train_and_evaluate`` does), ``vmapped`` (``fit_group(strategy='vmap')``: ``jax.vmap`` programs of
``vmap_size`` runs, on CPU slices of 2 runs, ``os.cpu_count()`` slices at a time in threads) and
``scan`` (``fit_group(strategy='scan')``, the default: one scanned program per run,
``os.cpu_count()`` runs at a time in threads). ``group_speedup``: one by one vs the faster of the two grouped paths.

Compile time: the headline ratios (``vmap_speedup``, ``scan_speedup``) are measured with XLA's
persistent compilation cache on and warm, as ``jaxprune sweep`` runs: compilation itself is EXCLUDED
(a cache hit), Python tracing/lowering of each call is included. ``*_cold`` fields: no persistent
cache, so every ``fit`` call (and every ``fit_group`` call) compiles: compile INCLUDED.
``steady_ms_per_run_step``: pre-compiled programs only (fit's per-step loop over one compiled step vs
the compiled scans, slice after slice / run after run, no threads). Prints one JSON line.

``--grid``: only compiled programs of 1 (the scanned step), 2, 4 or 8 runs (its ``vmap``), 1, 2 or 4
programs at a time in threads, timed interleaved, ms per run-step (the table in docs/vmapped.md; run it under
``taskset -c 0`` for one core).

``--malloc keep`` (default, as ``jaxprune sweep`` runs): ``jaxprune.hostmem.keep_freed_memory()`` first;
``--malloc default``: glibc's own allocator settings. Both paths run under the same setting.

Usage: python scripts/bench_sweep.py [--axis seed|sparsity] [--steps 300] [--repeats 5] [--grid] [--malloc keep|default]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental.compilation_cache import compilation_cache

from jaxprune import data as jdata
from jaxprune.allocate import uniform_sparsity
from jaxprune.errors import DataError
from jaxprune.hostmem import keep_freed_memory
from jaxprune.masks import apply_masks
from jaxprune.models import get_model, init_params
from jaxprune.scores import magnitude_scores
from jaxprune.select import topk_masks
from jaxprune.train.group import (_chunk_runner, _chunk_size, _device_data, _epoch_indices, _slices, _stack,
                                      _vmap_size, fit_group)
from jaxprune.train import create_train_state, fit, make_train_step, masked

RUNS = 8


def _data(n: int) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        x, y = jdata.load("fashion_mnist", "train", validation_size=0)
        return x[:n], y[:n], "fashion_mnist"
    except DataError:
        rng = np.random.default_rng(0)
        return (rng.random((n, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, n).astype(np.int32),
                "random")


def _setup(axis: str):
    """Model, per-run initial states, the shared update rule and per-run seeds."""
    model = get_model("lenet300", 10)

    def init(seed: int) -> dict:  # as jaxprune.experiment.make_run
        return init_params(model, jax.random.fold_in(jax.random.PRNGKey(seed), 0), (1, 28, 28, 1))

    if axis == "seed":
        tx = optax.adam(1e-3)
        return model, [create_train_state(init(s), tx) for s in range(RUNS)], tx, list(range(RUNS))
    v = init(0)
    txs, states = [], []
    for s in np.linspace(0.1, 0.8, RUNS):
        m = topk_masks(magnitude_scores(v["params"]), uniform_sparsity(v["params"], float(s)))
        txs.append(masked(optax.adam(1e-3), m))
        states.append(create_train_state({"params": apply_masks(v["params"], m)}, txs[-1]))
    return model, states, txs[0], [0] * RUNS


def _one_by_one(model, states, tx, x, y, seeds, batch):
    out = [fit(model, st, tx, x, y, epochs=1, batch_size=batch, seed=s, progress=False)[0]
           for st, s in zip(states, seeds)]
    return jax.block_until_ready(out)


def _together(model, states, tx, x, y, seeds, batch, strategy):
    out = fit_group(model, states, tx, [(x, y)] * len(states), epochs=1, batch_size=batch,
                      seeds=seeds, strategy=strategy)
    return jax.block_until_ready(out)


def _slice_trainer(model, tx, states, seeds, x, y, batch, steps, size):
    """``(train, n)``: ``train(i)`` trains slice ``i`` of ``size`` runs (1: the scanned step, else its
    vmap) for one epoch with pre-compiled programs, as ``fit_group`` does; ``n`` slices in all."""
    images, labels, offsets = _device_data([(x, y)])
    run, k = _chunk_runner(model, tx, size > 1), _chunk_size(steps, 64)
    slices = _slices(len(states), size)
    chunks = [list(_epoch_indices(len(y), [seeds[r] for r in sl], offsets * len(sl), 0, batch, steps, k))
              for sl in slices]

    def train(i):
        st = _stack([states[r] for r in slices[i]]) if size > 1 else jax.tree.map(jnp.copy, states[i])
        for idx, valid in chunks[i]:
            st = run(st, images, labels, idx if size > 1 else idx[:, 0], valid)
        return jax.block_until_ready(st)

    train(0)  # compile
    return train, len(slices)


def _steady(model, states, tx, x, y, seeds, batch, steps, repeats):
    """Compile-excluded times: fit's per-step loop over one compiled step vs compiled scans."""
    step = make_train_step(model, tx)

    def seq():
        out = []
        for st, s in zip(states, seeds):
            losses = []
            for b in jdata.batches(x, y, batch, seed=s, epoch=0):
                st, loss, _ = step(st, b.images, b.labels)
                losses.append(loss)
            jax.device_get(losses)  # fit's per-epoch host sync
            out.append(st)
        return jax.block_until_ready(out)

    fns = {"one_by_one": seq}
    # The default vmap slices, then single runs, one after the other (no threads).
    for name, size in (("vmapped", _vmap_size(None, len(states))), ("scan", 1)):
        train, n = _slice_trainer(model, tx, states, seeds, x, y, batch, steps, size)
        fns[name] = lambda train=train, n=n: [train(i) for i in range(n)]
    seq()  # compile
    return _timed(fns, repeats)


def _grid(model, states, tx, x, y, seeds, batch, steps, repeats) -> dict:
    """Compiled programs only: ms per run-step for ``size`` runs per program (1 = the scanned step
    without vmap, else its vmap) and ``threads`` programs at a time, over all 8 runs; every setting
    compiled first, then timed interleaved (``repeats`` rounds, median)."""
    paths, pools = {}, []
    for size in (1, 2, 4, 8):
        train, n = _slice_trainer(model, tx, states, seeds, x, y, batch, steps, size)
        for threads in (1, 2, 4):
            if threads <= n:
                pools.append(ThreadPoolExecutor(threads))
                paths[f"{size}x{threads}"] = lambda pool=pools[-1], train=train, n=n: list(pool.map(train, range(n)))
    times = _timed(paths, repeats)
    for pool in pools:
        pool.shutdown()
    return {key: round(t / (len(states) * steps) * 1e3, 3) for key, t in times.items()}


def _timed(paths: dict, repeats: int) -> dict:
    times = {k: [] for k in paths}
    for _ in range(repeats):
        for k, f in paths.items():
            gc.collect()  # the previous path's garbage is not collected on this path's clock
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--axis", choices=("seed", "sparsity"), default="seed")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--grid", action="store_true",
                    help="only the compiled ms per run-step for 1/2/4/8 runs per program x 1/2/4 threads")
    ap.add_argument("--malloc", choices=("keep", "default"), default="keep",
                    help="keep: jaxprune.hostmem.keep_freed_memory() first (as jaxprune sweep); default: glibc's own")
    args = ap.parse_args()
    malloc = "keep" if args.malloc == "keep" and keep_freed_memory() else "default"
    x, y, source = _data(args.steps * args.batch)
    model, states, tx, seeds = _setup(args.axis)
    if args.grid:
        grid = _grid(model, states, tx, x, y, seeds, args.batch, args.steps, args.repeats)
        print(json.dumps({"ms_per_run_step": grid, "key": "runs per program x threads", "axis": args.axis,
                          "steps": args.steps, "batch": args.batch, "repeats": args.repeats, "data": source,
                          "cpus_usable": len(os.sched_getaffinity(0)), "malloc": malloc}))
        return
    load = os.getloadavg()[0]
    paths = {
        "one_by_one": lambda: _one_by_one(model, states, tx, x, y, seeds, args.batch),
        "vmapped": lambda: _together(model, states, tx, x, y, seeds, args.batch, "vmap"),
        "scan": lambda: _together(model, states, tx, x, y, seeds, args.batch, "scan"),
    }
    cold = _timed(paths, args.repeats)  # no persistent cache yet: every call compiles
    with tempfile.TemporaryDirectory() as cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        for f in paths.values():
            f()  # fill the cache
        warm = _timed(paths, args.repeats)
        jax.config.update("jax_compilation_cache_dir", None)
        compilation_cache.reset_cache()
    steady = _steady(model, states, tx, x, y, seeds, args.batch, args.steps, args.repeats)
    run_steps = RUNS * args.steps
    print(json.dumps({
        "vmap_speedup": round(warm["one_by_one"] / warm["vmapped"], 3),
        "group_speedup": round(warm["one_by_one"] / min(warm["vmapped"], warm["scan"]), 3),
        "scan_speedup": round(warm["one_by_one"] / warm["scan"], 3),
        "vmap_speedup_cold": round(cold["one_by_one"] / cold["vmapped"], 3),
        "scan_speedup_cold": round(cold["one_by_one"] / cold["scan"], 3),
        "seconds": {k: round(warm[k], 3) for k in paths},
        "seconds_cold": {k: round(cold[k], 3) for k in paths},
        "steady_ms_per_run_step": {k: round(v / run_steps * 1e3, 3) for k, v in steady.items()},
        "compile": "excluded (persistent cache warm) in *_speedup; included in *_cold",
        "vmap_size": _vmap_size(None, RUNS), "workers": os.cpu_count(), "axis": args.axis, "runs": RUNS,
        "steps": args.steps, "batch": args.batch, "repeats": args.repeats, "data": source, "model": "lenet300", "backend": jax.default_backend(),
        "cpus": os.cpu_count(), "load_avg_1m_at_start": round(load, 2), "malloc": malloc,
    }))


if __name__ == "__main__":
    main()
