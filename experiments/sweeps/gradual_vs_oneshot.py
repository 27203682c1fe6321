"""Gradual magnitude pruning during training (Zhu & Gupta 2017, cubic schedule from 0 at 0 % to the
target at 75 % of training, mask updates every 100 steps) vs one-shot magnitude pruning after
training, both with layerwise (uniform) sparsity and 1 fine-tuning epoch with the masks fixed, at
50/75/90/95/98 % sparsity. LeNet-300-100 on ``dataset=auto``, 3 seeds, plus a dense row per seed.
33 runs.

Shortened: 5 epochs + 1 fine-tuning epoch at batch 128 (the dense rows train 6), Adam 1e-3.

Estimated time (2-core CPU; see docs/sweeps.md): ~11 min: timed single runs at 90 % (seed 1, cache
warm) took 17.5 s of CPU (gradual) and 20.1 s (one-shot); 15 + 15 + 3 dense runs.

    jaxprune sweep experiments/sweeps/gradual_vs_oneshot.py --workdir runs/gradual
    jaxprune report runs/gradual --best
"""

from pathlib import Path

from jaxprune.config import load_config
from jaxprune.sweep import Sweep, product, zip_


def base_config():
    """The base config (lenet300.py), imported by path: no sys.path edits."""
    return load_config(Path(__file__).resolve().parents[1] / "configs" / "lenet300.py")


SEEDS = [0, 1, 2]
SPARSITIES = [0.5, 0.75, 0.9, 0.95, 0.98]


def get_sweep():
    base = base_config()
    base.epochs = 5
    base.finetune_epochs = 1
    base.batch_size = 128
    base.scorer = "magnitude"
    base.allocation = "uniform"
    base.prune_begin = 0.0
    base.prune_end = 0.75
    base.update_every = 100
    base.latency_batch = 0
    dense = Sweep(base, [zip_({"method": ["none"], "sparsity": [0.0], "epochs": [6],
                               "finetune_epochs": [0]}),
                         product({"seed": SEEDS})])
    pruned = Sweep(base, [product({"method": ["gradual_magnitude", "one_shot"], "sparsity": SPARSITIES,
                                   "seed": SEEDS})])
    return [dense, pruned]
