"""Train nanoGPT's CPU-size character model on Shakespeare, then prune it one-shot.

Trains (or restores from ``<workdir>/dense``, an orbax checkpoint) the 4-layer, 4-head, width-128,
context-64 GPT, then prunes it with magnitude / Wanda / SparseGPT from 128 calibration windows of the
training split, and prints a markdown table of validation loss and perplexity, dense vs pruned, plus
a few generated lines. Writes ``<workdir>/result.json``. The dense model is the one
``jaxprune.lm.experiment.dense_gpt`` trains or restores for ``jaxprune run``/``sweep`` (same fields,
same checkpoint rules), so ``--checkpoint-dir`` can point at a sweep's model.

    python scripts/lm_oneshot.py --workdir runs/lm_oneshot --steps 2000
    python scripts/lm_oneshot.py --workdir runs/lm_samples --checkpoint-dir runs/llm_oneshot/gpt_dense
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxprune.data.text import load_text, token_windows  # noqa: E402
from jaxprune.lm import prune_lm  # noqa: E402
from jaxprune.lm.experiment import LM_FIELDS, dense_gpt, evaluate_lm, generate  # noqa: E402


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
    ap.add_argument("--checkpoint-dir", default="",
                    help="orbax dir of the dense GPT, relative to the current directory ('' = "
                         "<workdir>/dense); e.g. the llm_oneshot "
                         "sweep's runs/llm_oneshot/gpt_dense to reuse its model")
    args = ap.parse_args(argv)

    # The training fields of a `jaxprune run` lm config, so the checkpoint (and its refusal of a
    # model trained with other fields) is the one `dense_gpt` manages for runs and sweeps.
    config = ml_collections.ConfigDict({k: spec.default for k, spec in LM_FIELDS.items()})
    config.update(steps=args.steps, max_train_seconds=args.max_train_seconds, batch_size=args.batch,
                  learning_rate=args.lr, seed=args.seed,
                  checkpoint_dir=os.path.abspath(args.checkpoint_dir) if args.checkpoint_dir else "")
    corpus = load_text("shakespeare")
    os.makedirs(args.workdir, exist_ok=True)
    model, params, meta = dense_gpt(config, corpus, args.workdir)
    print(("restored" if meta["restored"] else "trained") + f" dense GPT: {meta['steps_done']} steps")

    val = token_windows(corpus.validation, args.eval_windows, model.context + 1, seed=1)
    calib = token_windows(corpus.train, args.calibration, model.context, seed=2)
    dense_loss = evaluate_lm(model, params, val)
    rows = [("dense", "-", dense_loss, math.exp(dense_loss), None, None)]
    samples = {"dense": generate(model, params, corpus.tokenizer, "ROMEO:\n", 120)}
    results = []
    for spec in args.settings.split(","):
        label, sparsity, nm = _setting(spec.strip())
        for method in args.methods.split(","):
            r = prune_lm(model, {"params": params}, calib, method, sparsity, nm=nm)
            loss = evaluate_lm(model, r.params["params"], val)
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
    print(f"\ntrained {meta['steps_done']} steps, batch {config.batch_size}; val = {len(val)} windows "
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
