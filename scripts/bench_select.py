"""Benchmark: exact global / layerwise selection on ResNet-50's 161 parameter shapes (25.6 M).

Times, median of 5 after warm-up, all jitted, in one run:
  * global_masks(magnitude_scores(p), 0.9)
  * layerwise topk_masks(magnitude_scores(p), erk_sparsity(p, 0.9))
  * a baseline that sorts: jnp.sort of the concatenated scores (what an argsort-based pruner pays).
Prints one JSON line. Usage: python scripts/bench_select.py [--repeats 5]
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

import jaxprune as jp


def resnet50_shapes() -> dict:
    """The 161 parameter shapes of torchvision's ResNet-50 (HWIO convs, BN scale/bias, fc)."""
    shapes = {"conv1": (7, 7, 3, 64), "bn1/scale": (64,), "bn1/bias": (64,)}
    cin = 64
    for stage, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)]):
        for b in range(blocks):
            pre = f"layer{stage + 1}/{b}"
            for j, (k, ci, co) in enumerate([(1, cin, width), (3, width, width), (1, width, 4 * width)]):
                shapes[f"{pre}/conv{j + 1}"] = (k, k, ci, co)
                shapes[f"{pre}/bn{j + 1}/scale"] = (co,)
                shapes[f"{pre}/bn{j + 1}/bias"] = (co,)
            if b == 0:
                shapes[f"{pre}/downsample/conv"] = (1, 1, cin, 4 * width)
                shapes[f"{pre}/downsample/bn/scale"] = (4 * width,)
                shapes[f"{pre}/downsample/bn/bias"] = (4 * width,)
            cin = 4 * width
    shapes["fc/kernel"] = (2048, 1000)
    shapes["fc/bias"] = (1000,)
    return shapes


def median_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # warm-up / compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    shapes = resnet50_shapes()
    keys = jax.random.split(jax.random.PRNGKey(0), len(shapes))
    params = {name: jax.random.normal(k, s) for k, (name, s) in zip(keys, shapes.items())}
    n = sum(x.size for x in jax.tree.leaves(params))
    assert len(shapes) == 161, len(shapes)

    # These shapes are named like torchvision's (no flax 'kernel' keys): select every matrix/kernel.
    conv_and_fc = lambda path, leaf: leaf.ndim >= 2  # noqa: E731
    global_fn = jax.jit(lambda p, s: jp.global_masks(jp.magnitude_scores(p), s, include=conv_and_fc))
    layer_fn = jax.jit(lambda p, s: jp.topk_masks(jp.magnitude_scores(p),
                                                  jp.erk_sparsity(p, s, include=conv_and_fc)))
    sort_fn = jax.jit(lambda p: jnp.sort(jnp.concatenate([jnp.abs(x).ravel() for x in jax.tree.leaves(p)])))
    s = jnp.float32(0.9)
    g = median_time(global_fn, params, s, repeats=args.repeats)
    lw = median_time(layer_fn, params, s, repeats=args.repeats)
    srt = median_time(sort_fn, params, repeats=args.repeats)
    masks = global_fn(params, s)
    kept = sum(int(m.sum()) for m in jax.tree.leaves(masks) if m.ndim >= 2)
    prunable = sum(x.size for x in jax.tree.leaves(params) if x.ndim >= 2)
    assert prunable - kept == jp.num_pruned(s, prunable), "global selection is not exact"
    print(json.dumps({"params": int(n), "global_s": round(g, 4), "layerwise_s": round(lw, 4),
                      "sort_baseline_s": round(srt, 4), "global_vs_sort": round(g / srt, 4),
                      "device": jax.devices()[0].platform}))


if __name__ == "__main__":
    main()
