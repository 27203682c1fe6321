"""Benchmark: masked vs dense Adam train step (masks in the optimizer state, updates masked).

Times, in one run, median of >= 200 steps after warm-up: a dense Adam step, the masked step at 90 %
sparsity (jaxprune.masked) and the masked step with its chain-order check switched off
(``check_zero=False``), for LeNet-300-100 at batch 128 and a 5-layer 1024-wide MLP at batch 256; the
three are interleaved in blocks so machine noise hits all alike. Prints one JSON line
{"lenet300_ratio": masked/dense, "wide_mlp_ratio": masked/dense,
 "lenet300_check_ratio": masked/unchecked, "wide_mlp_check_ratio": masked/unchecked, ...}.

Usage: python scripts/bench_step.py [--steps 300]
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import jaxprune as jp
from jaxprune.models import MLP, init_params
from jaxprune.train import create_train_state, make_train_step, masked


def _timer(step, state, x, y, n):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        state, loss, _ = step(state, x, y)
        loss.block_until_ready()
        times.append(time.perf_counter() - t0)
    return state, times


def case(features, in_dim, batch, steps, seed=0):
    model = MLP(features)
    v = init_params(model, jax.random.PRNGKey(seed), (1, in_dim))
    masks = jp.topk_masks(jp.magnitude_scores(v["params"]), jp.uniform_sparsity(v["params"], 0.9))
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, in_dim))
    y = jax.random.randint(jax.random.PRNGKey(2), (batch,), 0, features[-1])
    txs = {"dense": optax.adam(1e-3), "masked": masked(optax.adam(1e-3), masks),
           "unchecked": masked(optax.adam(1e-3), masks, check_zero=False)}
    runs = {}
    for name, tx in txs.items():
        step = make_train_step(model, tx)
        state = create_train_state(v, tx)
        state, _ = _timer(step, state, x, y, 20)  # compile + warm-up
        runs[name] = [step, state, []]
    block = 25
    for _ in range(max(1, steps // block)):
        for name in txs:
            step, state, times = runs[name]
            runs[name][1], t = _timer(step, state, x, y, block)
            times.extend(t)
    return tuple(statistics.median(runs[name][2]) for name in txs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    ld, lm, lu = case((300, 100, 10), 784, 128, args.steps)
    wd, wm, wu = case((1024, 1024, 1024, 1024, 10), 1024, 256, args.steps)
    print(json.dumps({"lenet300_ratio": round(lm / ld, 3), "wide_mlp_ratio": round(wm / wd, 3),
                      "lenet300_check_ratio": round(lm / lu, 3), "wide_mlp_check_ratio": round(wm / wu, 3),
                      "lenet300_unchecked_ms": round(1e3 * lu, 3), "wide_mlp_unchecked_ms": round(1e3 * wu, 3),
                      "lenet300_dense_ms": round(1e3 * ld, 3), "lenet300_masked_ms": round(1e3 * lm, 3),
                      "wide_mlp_dense_ms": round(1e3 * wd, 3), "wide_mlp_masked_ms": round(1e3 * wm, 3),
                      "device": jax.devices()[0].platform}))


if __name__ == "__main__":
    main()
