"""Benchmark of structural pruning through the traced graph (issue 17, Performance).

Prints one JSON line:

* ``trace``: seconds to trace + group a flax ResNet-50 (bottleneck v1.5, 224x224x3, 1000 classes,
  written below) and the zoo ViT (28x28x1), with the number of groups found and how many are
  prunable (best of ``--trace-repeats``, after one warm-up trace).
* ``models``: for each zoo model (ResNet-18, MobileNetV2, ViT, the 784-128-10 MLP, LeNet-300-100;
  28x28x1, 10 classes) and each ``--round-to`` (1, 8, 16) with 50 % of every prunable group's units
  removed (``jaxprune.prune_structured``, L2): the time of that call, the XLA FLOPs ratio dense /
  shrunk, and the latency ratio at each ``--batch`` (dense and shrunk timed in alternating rounds,
  medians), also with both models under ``jaxprune.shrink.fastconv.fast_convs`` and
  ``jaxprune.shrink.fastattn.fast_attention`` (``*_fast``); ``flops_over_latency`` is the FLOPs ratio
  over the better latency ratio with the same lowering on both sides (goal: <= 1.3);
  ``latency_ratio_served`` is the plain dense model over the shrunk one with the fast lowerings.

Usage: python scripts/bench_structure.py [--batch 64 256] [--rounds 3] [--repeats 10] [--warmup 5]
       [--models resnet18 mobilenet vit mlp_784_128 lenet300] [--round-to 1 8 16] [--trace-only]
"""

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxprune.errors import JaxpruneError
from jaxprune.models import MLP
from jaxprune.models.mobilenet import MobileNetV2
from jaxprune.models.resnet18 import ResNet18
from jaxprune.models.vit import ViT
from jaxprune.shrink import fast_lowerings, flops, latency_ms
from jaxprune.structure import prune_structured, trace_linen

SHAPE = (28, 28, 1)


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck (torchvision v1.5: the stride sits on the 3x3 conv)."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda: nn.BatchNorm(use_running_average=not train)  # noqa: E731
        s = (self.strides, self.strides)
        y = nn.relu(norm()(nn.Conv(self.features, (1, 1), use_bias=False)(x)))
        y = nn.relu(norm()(nn.Conv(self.features, (3, 3), s, padding="SAME", use_bias=False)(y)))
        y = norm()(nn.Conv(4 * self.features, (1, 1), use_bias=False)(y))
        if x.shape[-1] != 4 * self.features or self.strides != 1:
            x = norm()(nn.Conv(4 * self.features, (1, 1), s, use_bias=False)(x))
        return nn.relu(x + y)


class ResNet50(nn.Module):
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(64, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
        for stage, (features, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
            for b in range(blocks):
                x = Bottleneck(features, 2 if stage > 0 and b == 0 else 1)(x, train=train)
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


def trace_seconds(model, shape, repeats):
    x = jnp.zeros((1, *shape))
    variables = jax.eval_shape(lambda k: model.init(k, x), jax.random.PRNGKey(0))
    variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables)
    graph = trace_linen(model, variables, x)  # warm-up: imports, jaxpr caches
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        graph = trace_linen(model, variables, x)
        best = min(best, time.perf_counter() - t)
    return {"seconds": round(best, 3), "groups": len(graph.groups),
            "prunable": sum(g.prunable for g in graph.groups)}


ZOO = {"resnet18": lambda: ResNet18(10), "mobilenet": lambda: MobileNetV2(10), "vit": lambda: ViT(10),
       "mlp_784_128": lambda: MLP((128, 10)), "lenet300": lambda: MLP((300, 100, 10))}


def model_case(name, batches, rounds, repeats, round_to=None, warmup=5):
    model = ZOO[name]()
    x = jnp.zeros((1, *SHAPE))
    v = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    t = time.perf_counter()
    try:
        small, sv = prune_structured(model, v, x, 0.5, round_to=round_to)
    except JaxpruneError as err:  # report it and go on with the other models
        return {"model": name, "round_to": round_to, "error": str(err)[:300]}
    prune_s = time.perf_counter() - t
    row = {"model": name, "round_to": round_to or 1, "prune_seconds": round(prune_s, 3),
           "flops_ratio": round(flops(model, v, SHAPE) / flops(small, sv, SHAPE), 3)}
    for batch in batches:
        times = {"dense": [], "shrunk": [], "dense_fast": [], "shrunk_fast": []}
        for _ in range(rounds):
            times["dense"].append(latency_ms(model, v, SHAPE, batch, repeats, warmup=warmup))
            times["shrunk"].append(latency_ms(small, sv, SHAPE, batch, repeats, warmup=warmup))
            with fast_lowerings():  # fast_convs() + fast_attention()
                times["dense_fast"].append(latency_ms(model, v, SHAPE, batch, repeats, warmup=warmup))
                times["shrunk_fast"].append(latency_ms(small, sv, SHAPE, batch, repeats, warmup=warmup))
        ms = {k: statistics.median(ts) for k, ts in times.items()}
        plain, fast = ms["dense"] / ms["shrunk"], ms["dense_fast"] / ms["shrunk_fast"]
        row[f"batch_{batch}"] = {**{f"{k}_ms": round(t, 2) for k, t in ms.items()},
                                 "latency_ratio": round(plain, 3),
                                 "latency_ratio_fast": round(fast, 3),
                                 # what a user of the unchanged dense model sees from pruning + lowering
                                 "latency_ratio_served": round(ms["dense"] / ms["shrunk_fast"], 3),
                                 # the goal: within 1.3x of the FLOPs ratio (issue 17), with the same
                                 # lowering on both sides (plain XLA, or fast_convs + fast_attention)
                                 "flops_over_latency": round(row["flops_ratio"] / max(plain, fast), 3)}
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5, help="untimed calls before each timing")
    ap.add_argument("--trace-repeats", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=sorted(ZOO), choices=sorted(ZOO))
    ap.add_argument("--round-to", type=int, nargs="+", default=[1, 8, 16],
                    help="round_to values (1: none); every model runs once per value")
    ap.add_argument("--trace-only", action="store_true")
    args = ap.parse_args()
    out = {"trace": {"resnet50_224": trace_seconds(ResNet50(), (224, 224, 3), args.trace_repeats),
                     "vit_28": trace_seconds(ViT(10), SHAPE, args.trace_repeats)}}
    if not args.trace_only:
        out["models"] = []
        for m in args.models:
            for r in args.round_to:
                out["models"].append(model_case(m, args.batch, args.rounds, args.repeats,
                                                None if r == 1 else r, args.warmup))
                # each case as it finishes, so a long run killed midway keeps what it measured
                print(json.dumps(out["models"][-1]), file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
