"""Seconds for Wanda and SparseGPT on GPT-2-small layer shapes; prints one JSON line.

Shapes (flax ``(in, out)``): 768x768 (attention projections), 768x3072 (MLP up), 3072x768 (MLP
down), each with statistics from 16 384 calibration tokens (128 sequences x 128 tokens of random
correlated activations). Per method and shape: ``compile_s`` (first call) and ``seconds`` (median of
the later calls, statistics excluded: the layer function alone) plus ``stats_s``, the time to stream
the statistic (Wanda: sum x^2; SparseGPT: H = X^T X) from the 16 k tokens. ``peak_rss_bytes`` is the
process's peak resident set (CPU has no device allocator statistics; ``peak_bytes_in_use`` is added
on a GPU).

    python scripts/bench_lm_prune.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxprune.lm import sparsegpt_layer, wanda_layer  # noqa: E402

SHAPES = ((768, 768), (768, 3072), (3072, 768))


def _timed(fn, *args, repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        runs.append(time.perf_counter() - t)
    return first, statistics.median(runs)


def _whole_model(args):
    """Seconds of ``prune_lm`` (first call, compile included) on the trained Shakespeare GPT."""
    import numpy as np
    import orbax.checkpoint as ocp

    from jaxprune.data.text import load_text, token_windows
    from jaxprune.lm import prune_lm
    from jaxprune.models.gpt import gpt_nano

    ckdir = os.path.abspath(os.path.join(args.model, "dense"))
    if not os.path.isdir(ckdir):
        return None
    corpus = load_text("shakespeare")
    model = gpt_nano(corpus.tokenizer.vocab_size, 64)
    like = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64), jnp.int32))["params"]
    params = ocp.StandardCheckpointer().restore(ckdir, like)
    calib = token_windows(corpus.train, 128, 64, seed=2)
    res = {"calibration_tokens": int(np.prod(calib.shape))}
    for method in ("magnitude", "wanda", "sparsegpt"):
        r = prune_lm(model, {"params": params}, calib, method, args.sparsity)
        res[f"{method}_s"] = round(r.seconds, 2)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--model", default="runs/lm_oneshot",
                    help="workdir of scripts/lm_oneshot.py; its trained model is pruned too if present")
    args = ap.parse_args(argv)
    key = jax.random.PRNGKey(0)
    out = {"tokens": args.tokens, "sparsity": args.sparsity, "backend": jax.default_backend(),
           "devices": jax.device_count(), "layers": []}
    stats_h = jax.jit(lambda x: x.T @ x)
    stats_c = jax.jit(lambda x: jnp.sum(x * x, axis=0))
    for n_in, n_out in SHAPES:
        k1, k2, k3 = jax.random.split(jax.random.fold_in(key, n_in * n_out), 3)
        mix = jnp.eye(n_in) + 0.1 * jax.random.normal(k1, (n_in, n_in)) / jnp.sqrt(n_in)
        x = jax.random.normal(k2, (args.tokens, n_in)) @ mix
        kernel = 0.02 * jax.random.normal(k3, (n_in, n_out))
        row = {"shape": [n_in, n_out]}
        _, row["wanda_stats_s"] = _timed(stats_c, x, repeats=args.repeats)
        _, row["sparsegpt_stats_s"] = _timed(stats_h, x, repeats=args.repeats)
        col, h = stats_c(x), stats_h(x)
        for name, fn, stat in (("wanda", wanda_layer, col), ("sparsegpt", sparsegpt_layer, h)):
            for label, nm in (("", None), ("_2:4", (2, 4))):
                first, med = _timed(lambda k, s: fn(k, s, args.sparsity, nm), kernel, stat,
                                    repeats=args.repeats)
                row[f"{name}{label}_compile_s"] = round(first, 3)
                row[f"{name}{label}_s"] = round(med, 3)
        row = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
        out["layers"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    for name in ("wanda", "sparsegpt"):
        out[f"{name}_total_s"] = round(sum(r[f"{name}_s"] for r in out["layers"]), 3)
    out["model"] = _whole_model(args)
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    mem = jax.local_devices()[0].memory_stats()
    if mem and "peak_bytes_in_use" in mem:
        out["peak_bytes_in_use"] = int(mem["peak_bytes_in_use"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
