"""``scripts/demo``: the notebook-style pipeline on a fresh model, then the seed example for real.

1. Init a 784-128-10 MLP, magnitude scores, ERK sparsity 0.9, masks, apply, print the summary.
2. Train it 5 epochs with Adam on Fashion-MNIST (digits when the files are absent), prune 50 % by
   global magnitude, evaluate, fine-tune 2 epochs with the masks fixed, evaluate again.
"""

from __future__ import annotations

import os
import sys

import jax

import jaxprune as jp
from jaxprune.models import init_params, tutorial_mlp


def notebook_example() -> None:
    model = tutorial_mlp()
    params = init_params(model, jax.random.PRNGKey(0), (1, 28, 28, 1))
    scores = jp.magnitude_scores(params)
    sparsity = jp.erk_sparsity(params, 0.9)
    masks = jp.topk_masks(scores, sparsity)
    pruned = jp.apply_masks(params, masks)
    print(jp.summary(pruned).table())


def main() -> int:
    print("== 1. scores -> ERK sparsity 0.9 -> masks -> apply (fresh 784-128-10 MLP) ==")
    notebook_example()
    print("\n== 2. seed example: train 5 epochs, prune 50 %, evaluate, fine-tune 2 epochs ==")
    from jaxprune.cli import main as cli

    workdir = os.environ.get("JAXPRUNE_DEMO_DIR", "runs/demo")
    return cli(["run", "experiments/configs/seed_mlp.py", "finetune_epochs=2", *sys.argv[1:],
                "--workdir", workdir])


if __name__ == "__main__":
    sys.exit(main())
