"""Depthwise convs on XLA:CPU: XLA's grouped conv vs the shifted form (``jaxprune.shrink.fastconv``).

Prints one JSON line: for each 3x3 depthwise shape of the zoo MobileNetV2 on 28x28 inputs (batch
``--batch``), the median ms of ``lax.conv_general_dilated(..., feature_group_count=C)`` and of
``shifted_conv`` (both jitted, alternating rounds) and their ratio; then the whole zoo MobileNetV2
(``jaxprune.models.mobilenet.MobileNetV2(10)``) with XLA's convs and under ``fast_convs()``.

Usage: python scripts/bench_depthwise.py [--batch 64] [--rounds 3] [--repeats 10]
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax

from jaxprune.models.mobilenet import MobileNetV2
from jaxprune.shrink import latency_ms
from jaxprune.shrink.fastconv import fast_convs, shifted_conv

DN = ("NHWC", "HWIO", "NHWC")
# (spatial, channels, stride) of MobileNetV2's depthwise convs at 28x28 (stem at stride 1)
SHAPES = [(28, 32, 1), (28, 96, 2), (14, 144, 1), (14, 144, 2), (7, 192, 1), (7, 384, 1), (7, 576, 1),
          (7, 960, 1)]


def _ms(fn, args, repeats):
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    out = {"batch": args.batch, "convs": []}
    for hw, c, s in SHAPES:
        x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, hw, hw, c))
        w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 1, c))
        xla = jax.jit(lambda x, w, s=s, c=c: lax.conv_general_dilated(
            x, w, (s, s), "SAME", dimension_numbers=DN, feature_group_count=c))
        fast = jax.jit(lambda x, w, s=s: shifted_conv(x, w, (s, s), "SAME", feature_group_count=x.shape[-1]))
        err = float(jnp.max(jnp.abs(xla(x, w) - fast(x, w))))
        times = {"xla": [], "shifted": []}
        for _ in range(args.rounds):
            times["xla"].append(_ms(xla, (x, w), args.repeats))
            times["shifted"].append(_ms(fast, (x, w), args.repeats))
        ms = {k: statistics.median(v) for k, v in times.items()}
        out["convs"].append({"hw": hw, "channels": c, "stride": s, "xla_ms": round(ms["xla"], 3),
                             "shifted_ms": round(ms["shifted"], 3),
                             "xla_over_shifted": round(ms["xla"] / ms["shifted"], 1), "max_abs_err": err})
    model = MobileNetV2(10)
    v = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    times = {"xla": [], "fast_convs": []}
    for _ in range(args.rounds):
        times["xla"].append(latency_ms(model, v, (28, 28, 1), args.batch, args.repeats, warmup=2))
        with fast_convs():
            times["fast_convs"].append(latency_ms(model, v, (28, 28, 1), args.batch, args.repeats, warmup=2))
    ms = {k: statistics.median(t) for k, t in times.items()}
    out["mobilenet_v2"] = {"xla_ms": round(ms["xla"], 2), "fast_convs_ms": round(ms["fast_convs"], 2),
                           "speedup": round(ms["xla"] / ms["fast_convs"], 2)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
