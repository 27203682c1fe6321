"""Train nanoGPT's CPU-size character model on Shakespeare, then prune it one-shot.

Trains (or restores from ``<workdir>/dense``, an orbax checkpoint) the 4-layer, 4-head, width-128,
context-64 GPT, then prunes it with magnitude / Wanda / SparseGPT from 128 calibration windows of the
training split, and prints a markdown table of validation loss and perplexity, dense vs pruned, plus
a few generated lines. Writes ``<workdir>/result.json``.

    python scripts/lm_oneshot.py --workdir runs/lm_oneshot --steps 2000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxprune.data.text import load_text, random_windows, token_windows  # noqa: E402
from jaxprune.lm import prune_lm  # noqa: E402
from jaxprune.lm.experiment import evaluate_lm, train_gpt  # noqa: E402
from jaxprune.models.gpt import gpt_nano  # noqa: E402


def train(model, corpus, args):
    """The library's GPT trainer (jaxprune.lm.experiment.train_gpt) with this script's flags."""
    params, done, secs = train_gpt(model, corpus.train, steps=args.steps, batch_size=args.batch,
                                   learning_rate=args.lr, seed=args.seed,
                                   max_seconds=args.max_train_seconds, log=lambda m: print(m, flush=True))
    if done < args.steps:
        print(f"stopping at step {done}: --max-train-seconds={args.max_train_seconds} reached")
    return params, done, secs


evaluate = evaluate_lm


def generate(model, params, tok, prompt, n, seed=0, temperature=0.8):
    ids = list(tok.encode(prompt))
    f = jax.jit(lambda p, x: model.apply({"params": p}, x)[0, -1])
    key = jax.random.PRNGKey(seed)
    for _ in range(n):
        ctx = np.array(ids[-model.context :], np.int32)
        ctx = np.pad(ctx, (model.context - len(ctx), 0)) if len(ctx) < model.context else ctx
        key, sub = jax.random.split(key)
        ids.append(int(jax.random.categorical(sub, f(params, ctx[None]) / temperature)))
    return tok.decode(ids)


def _setting(spec):
    if ":" in spec:
        n, m = (int(v) for v in spec.split(":"))
        return spec, 1 - n / m, (n, m)
    return f"{float(spec):.0%}", float(spec), None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", default="runs/lm_oneshot")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--max-train-seconds", type=float, default=900)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calibration", type=int, default=128)
    ap.add_argument("--eval-windows", type=int, default=256)
    ap.add_argument("--settings", default="0.5,2:4,4:8,0.6,0.7")
    ap.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    args = ap.parse_args(argv)

    corpus = load_text("shakespeare")
    model = gpt_nano(corpus.tokenizer.vocab_size, 64)
    ckdir = os.path.abspath(os.path.join(args.workdir, "dense"))
    meta_path = os.path.join(args.workdir, "dense_meta.json")
    like = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64), jnp.int32))["params"]
    if os.path.exists(meta_path):
        params = ocp.StandardCheckpointer().restore(ckdir, like)
        meta = json.load(open(meta_path))
        print(f"restored dense params from {ckdir} ({meta['steps']} steps)")
    else:
        params, steps, secs = train(model, corpus, args)
        os.makedirs(args.workdir, exist_ok=True)
        ckpt = ocp.StandardCheckpointer()
        ckpt.save(ckdir, params)
        ckpt.wait_until_finished()
        meta = {"steps": steps, "train_seconds": secs, "batch": args.batch, "lr": args.lr}
        json.dump(meta, open(meta_path, "w"))

    val = token_windows(corpus.validation, args.eval_windows, 65, seed=1)
    calib = token_windows(corpus.train, args.calibration, 64, seed=2)
    dense_loss = evaluate(model, params, val)
    rows = [("dense", "-", dense_loss, math.exp(dense_loss), None, None)]
    samples = {"dense": generate(model, params, corpus.tokenizer, "ROMEO:\n", 120)}
    results = []
    for spec in args.settings.split(","):
        label, sparsity, nm = _setting(spec.strip())
        for method in args.methods.split(","):
            r = prune_lm(model, {"params": params}, calib, method, sparsity, nm=nm)
            loss = evaluate(model, r.params["params"], val)
            rel = float(np.mean([lr.relative_error for lr in r.layers]))
            rows.append((method, label, loss, math.exp(loss), rel, r.seconds))
            results.append(dict(method=method, setting=label, sparsity=sparsity, nm=nm,
                                dense_val_loss=dense_loss, dense_val_perplexity=math.exp(dense_loss),
                                val_loss=loss, val_perplexity=math.exp(loss),
                                mean_relative_layer_error=rel, seconds=r.seconds,
                                peak_bytes=r.peak_bytes))
            if label in ("50%", "2:4"):
                samples[f"{method} {label}"] = generate(model, r.params["params"], corpus.tokenizer,
                                                        "ROMEO:\n", 120)
            print(f"{method:9s} {label:4s} val loss {loss:.3f} ppl {math.exp(loss):.2f} "
                  f"rel. layer error {rel:.4f} ({r.seconds:.1f} s)", flush=True)
    print(f"\ntrained {meta['steps']} steps, batch {meta.get('batch')}; val = {len(val)} windows of 64 "
          f"from {len(corpus.validation_documents)} held-out plays; calibration = {len(calib)} x 64\n")
    print("| method | sparsity | val loss | val ppl | mean rel. layer error ‖XΔW‖²/‖XW‖² | prune s |")
    print("|---|---|---|---|---|---|")
    for m, s, loss, ppl, rel, secs in rows:
        print(f"| {m} | {s} | {loss:.3f} | {ppl:.2f} | {'-' if rel is None else f'{rel:.4f}'} | "
              f"{'-' if secs is None else f'{secs:.1f}'} |")
    print()
    for k, v in samples.items():
        print(f"--- {k}\n{v}\n")
    with open(os.path.join(args.workdir, "result.json"), "w") as fh:
        json.dump({"train": meta, "runs": results, "samples": samples}, fh, indent=1)


if __name__ == "__main__":
    main()
