"""Benchmark: does physically removing units buy the speed-up its FLOPs promise?

LeNet-300-100 and the SmallCNN (28x28x1 input) with 50 % and 75 % of every hidden layer's units
removed (lowest kernel-column L2 norm: magnitude unit masks), shrunk with ``jaxprune.shrink``. For
each case: XLA FLOPs of the jitted forward at batch 256, dense / shrunk, and the median CPU latency at
batch 256, dense / shrunk (dense and shrunk timed in alternating rounds so machine noise hits both).
Prints one JSON line ``{"cases": [{"model", "removed", "flops_ratio", "latency_ratio", ...}]}``.

``--mean-replacement`` instead prints one JSON line comparing plain removal with mean replacement on
an MLP (64-64-32-10) trained on sklearn's digits: logit MSE to the unpruned model and test accuracy,
random unit masks, 5 seeds.

``--fastconv`` instead prints one JSON line for the SmallCNN with 60 % and 75 % of its units removed,
kept counts rounded to multiples of ``round_to`` = 1, 8, 16: latency at batch 256 of the dense model,
the shrunk model on XLA's convs and the shrunk model under ``jaxprune.shrink.fastconv.fast_convs``
(timed in alternating rounds), the largest output difference between the two shrunk forwards, and
the FLOPs ratio.

Usage: python scripts/bench_shrink.py [--repeats 30] [--rounds 5] [--mean-replacement | --fastconv]
"""

import argparse
import json
import statistics

import jax
import numpy as np

from jaxprune.models import get_model, init_params
from jaxprune.shrink import flops, latency_ms, param_count, plan_for, shrink, unit_masks_from_scores
from jaxprune.shrink.plans import layer_params

BATCH = 256
SHAPE = (28, 28, 1)


def magnitude_unit_masks(model, variables, removed):
    """Remove the ``removed`` fraction of each prunable layer's units with the smallest column norm."""
    scores = {}
    for edge in plan_for(model).edges:
        kernel = np.asarray(layer_params(variables["params"], edge.layer)["kernel"])
        scores[edge.layer] = np.sqrt((kernel.reshape(-1, kernel.shape[-1]) ** 2).sum(axis=0))
    return unit_masks_from_scores(scores, removed)


def case(name, removed, repeats, rounds):
    model = get_model(name, 10)
    v = init_params(model, jax.random.PRNGKey(0), (1, *SHAPE))
    small, sv = shrink(model, v, magnitude_unit_masks(model, v, removed))
    times = {"dense": [], "shrunk": []}
    for _ in range(rounds):
        times["dense"].append(latency_ms(model, v, SHAPE, BATCH, repeats))
        times["shrunk"].append(latency_ms(small, sv, SHAPE, BATCH, repeats))
    dense_ms, shrunk_ms = (statistics.median(times[k]) for k in ("dense", "shrunk"))
    f_dense, f_shrunk = flops(model, v, SHAPE, BATCH), flops(small, sv, SHAPE, BATCH)
    return {"model": name, "removed": removed,
            "flops_ratio": round(f_dense / f_shrunk, 3), "latency_ratio": round(dense_ms / shrunk_ms, 3),
            "params_ratio": round(param_count(v) / param_count(sv), 3),
            "dense_ms": round(dense_ms, 3), "shrunk_ms": round(shrunk_ms, 3)}


def rounded_unit_masks(model, variables, removed, round_to):
    """Magnitude unit masks keeping ``units - round_half_even(removed * units)`` per layer, rounded to
    the nearest multiple of ``round_to`` (at least ``round_to``, at most every unit)."""
    plan = plan_for(model)
    norms, frac = {}, {}
    for edge in plan.edges:
        kernel = np.asarray(layer_params(variables["params"], edge.layer)["kernel"])
        norms[edge.layer] = np.sqrt((kernel.reshape(-1, kernel.shape[-1]) ** 2).sum(axis=0))
        n = norms[edge.layer].size
        keep = n - int(np.round(removed * n))
        keep = min(n, max(round_to, round_to * int(np.round(keep / round_to))))
        frac[edge.layer] = (n - keep) / n
    return unit_masks_from_scores(norms, frac)


def fastconv_case(removed, round_to, repeats, rounds):
    from jaxprune.shrink.fastconv import fast_convs

    model = get_model("small_cnn", 10)
    v = init_params(model, jax.random.PRNGKey(0), (1, *SHAPE))
    small, sv = shrink(model, v, rounded_unit_masks(model, v, removed, round_to))
    x = jax.random.normal(jax.random.PRNGKey(1), (BATCH, *SHAPE))
    plain = jax.jit(small.apply)(sv, x)
    with fast_convs():
        fast = jax.jit(small.apply)(sv, x)
    times = {"dense": [], "shrunk": [], "shrunk_fast": []}
    for _ in range(rounds):
        times["dense"].append(latency_ms(model, v, SHAPE, BATCH, repeats))
        times["shrunk"].append(latency_ms(small, sv, SHAPE, BATCH, repeats))
        with fast_convs():  # latency_ms traces here, so the shrunk convs get the fast lowering
            times["shrunk_fast"].append(latency_ms(small, sv, SHAPE, BATCH, repeats))
    ms = {k: statistics.median(t) for k, t in times.items()}
    return {"removed": removed, "round_to": round_to, "channels": list(small.channels),
            "hidden": small.hidden,
            "flops_ratio": round(flops(model, v, SHAPE, BATCH) / flops(small, sv, SHAPE, BATCH), 3),
            "latency_ratio_xla": round(ms["dense"] / ms["shrunk"], 3),
            "latency_ratio_fastconv": round(ms["dense"] / ms["shrunk_fast"], 3),
            **{f"{k}_ms": round(t, 3) for k, t in ms.items()},
            "max_abs_diff": float(np.max(np.abs(np.asarray(fast) - np.asarray(plain))))}


def mean_replacement_study(seeds=5, fractions=(0.25, 0.5), steps=300):
    import optax
    from sklearn.datasets import load_digits

    from jaxprune.models import MLP
    from jaxprune.neurons import collect_activation_stats

    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    xtr, ytr, xte, yte = x[:1200], y[:1200], x[1200:], y[1200:]
    model = MLP((64, 32, 10))
    v = init_params(model, jax.random.PRNGKey(0), (1, 64))
    tx = optax.adam(3e-3)

    @jax.jit
    def step(v, opt):
        loss = lambda v: optax.softmax_cross_entropy_with_integer_labels(model.apply(v, xtr), ytr).mean()
        g = jax.grad(loss)(v)
        u, opt = tx.update(g, opt, v)
        return optax.apply_updates(v, u), opt

    opt = tx.init(v)
    for _ in range(steps):
        v, opt = step(v, opt)
    ref = np.asarray(model.apply(v, xte))
    stats = collect_activation_stats(model, v, [xtr], hist_range=(0.0, 1.0))
    rows = []
    for frac in fractions:
        res = {"plain": ([], []), "mean": ([], [])}
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            um = {k: rng.permutation(n) >= round(frac * n) for k, n in (("Dense_0", 64), ("Dense_1", 32))}
            for kind, mr in (("plain", None), ("mean", stats)):
                m, sv = shrink(model, v, um, mean_replacement=mr)
                out = np.asarray(m.apply(sv, xte))
                res[kind][0].append(float(np.mean((out - ref) ** 2)))
                res[kind][1].append(float(np.mean(out.argmax(-1) == yte)))
        rows.append({"removed": frac, **{f"{k}_{q}": round(float(np.mean(res[k][i])), 3)
                                         for k in res for i, q in enumerate(("logit_mse", "acc"))}})
    dense_acc = float(np.mean(ref.argmax(-1) == yte))
    return {"model": "mlp 64-64-32-10 digits", "dense_acc": round(dense_acc, 3), "seeds": seeds,
            "rows": rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mean-replacement", action="store_true")
    ap.add_argument("--fastconv", action="store_true")
    args = ap.parse_args()
    if args.fastconv:
        cases = [fastconv_case(removed, r, args.repeats, args.rounds)
                 for removed in (0.75, 0.6) for r in (1, 8, 16)]
        print(json.dumps({"model": "small_cnn", "batch": BATCH, "cases": cases}))
        return
    if args.mean_replacement:
        print(json.dumps(mean_replacement_study()))
        return
    cases = [case(name, removed, args.repeats, args.rounds)
             for name in ("lenet300", "small_cnn") for removed in (0.5, 0.75)]
    print(json.dumps({"cases": cases}))


if __name__ == "__main__":
    main()
