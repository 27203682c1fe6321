"""``scripts/demo``: the notebook-style pipeline on a fresh model, then a small paper-style sweep.

1. Init a 784-128-10 MLP, magnitude scores, ERK sparsity 0.9, masks, apply, print the summary.
2. The demo sweep (``experiments/sweeps/demo.py``): one-shot global magnitude, one-shot random and
   gradual magnitude pruning at 50/70/90/95 % sparsity, 2 seeds, plus dense rows, on Fashion-MNIST
   (digits when the files are absent), into ``runs/demo`` (``JAXPRUNE_DEMO_DIR`` overrides; a rerun
   resumes and skips finished runs). Extra command-line arguments are ``key=value`` overrides of the
   sweep's base config (e.g. ``scripts/demo epochs=1``).
3. The report: ``summary.csv``, ``report.md``, the accuracy-vs-sparsity plot, and the most compressed
   strategy within 1 percentage point of dense accuracy.
"""

from __future__ import annotations

import os
import sys

import jax

import jaxprune as jp

SWEEP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "experiments", "sweeps", "demo.py")


def notebook_example() -> None:
    """The README's notebook example: a user-written linen MLP, magnitude scores, ERK 0.9, masks.

    >>> notebook_example()  # doctest: +ELLIPSIS
    leaf ...
    """
    import flax.linen as nn
    import jax.numpy as jnp

    class MLP(nn.Module):  # a model the user wrote; nothing from jaxprune.models
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(128)(x.reshape((x.shape[0], -1))))
            return nn.Dense(10)(x)

    params = MLP().init(jax.random.PRNGKey(0), jnp.ones((1, 28, 28, 1)))["params"]
    scores = jp.magnitude_scores(params)
    sparsity = jp.erk_sparsity(params, 0.9)
    masks = jp.topk_masks(scores, sparsity)
    pruned = jp.apply_masks(params, masks)
    print(jp.summary(pruned).table())


def main(argv: list[str] | None = None) -> int:
    from jaxprune.cli import main as cli

    argv = sys.argv[1:] if argv is None else list(argv)
    workdir = os.environ.get("JAXPRUNE_DEMO_DIR", "runs/demo")
    print("== 1. scores -> ERK sparsity 0.9 -> masks -> apply (your own 784-128-10 linen MLP) ==")
    notebook_example()
    print(f"\n== 2. demo sweep: 3 strategies x 4 sparsities x 2 seeds + dense -> {workdir} ==")
    rc = cli(["sweep", SWEEP, "--workdir", workdir, "--no-progress", *argv])
    if rc:
        return rc
    print(f"\n== 3. report: jaxprune report {workdir} --best --max-drop 1.0 ==")
    return cli(["report", workdir, "--best", "--max-drop", "1.0"])


if __name__ == "__main__":
    sys.exit(main())
