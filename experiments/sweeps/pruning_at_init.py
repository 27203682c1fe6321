"""Pruning at initialisation (Frankle et al. 2021, "Pruning neural networks at initialization: why
are we missing the mark?"): SNIP (Lee et al. 2019), GraSP (Wang et al. 2020), SynFlow (Tanaka et al.
2020, 100 iterations) and a random ERK mask (``static_sparse``), each pruned before training and then
trained with the mask fixed, vs magnitude pruning after training (``one_shot``, one global
threshold, then fine-tuned), at 90/95/98/99 % sparsity. LeNet-300-100 on ``dataset=auto``, 2 seeds,
plus a dense row per seed. 42 runs.

Same budget for every run: 4 epochs at batch 128, Adam 1e-3 (``epochs=3`` + ``finetune_epochs=1``:
pruning-at-init methods train 3 epochs and 1 more with the same mask; ``one_shot`` trains 3 dense,
prunes, fine-tunes 1; dense rows train 4).

Estimated time (2-core CPU; see docs/sweeps.md): ~11 min: timed single runs at 95 % (seed 1, cache
warm) took 14.9 s of CPU (SNIP), 15.8 (GraSP), 13.8 (SynFlow), 16.1 (static_sparse), 15.7
(one-shot); 8 runs each + 2 dense.

    jaxprune sweep experiments/sweeps/pruning_at_init.py --workdir runs/pai
    jaxprune report runs/pai --log-x --best
"""

from pathlib import Path

from jaxprune.config import load_config
from jaxprune.sweep import Sweep, cases, product, zip_


def base_config():
    """The base config (lenet300.py), imported by path: no sys.path edits."""
    return load_config(Path(__file__).resolve().parents[1] / "configs" / "lenet300.py")


SEEDS = [0, 1]
SPARSITIES = [0.9, 0.95, 0.98, 0.99]
METHODS = cases([
    {"method": "snip"},
    {"method": "grasp"},
    {"method": "synflow"},
    {"method": "static_sparse"},  # random mask, ERK per-layer sparsity
    {"method": "one_shot"},  # magnitude after training
])


def get_sweep():
    base = base_config()
    base.epochs = 3
    base.finetune_epochs = 1
    base.batch_size = 128
    base.scorer = "magnitude"
    base.allocation = "global"
    base.pai_rounds = 100
    base.latency_batch = 0
    dense = Sweep(base, [zip_({"method": ["none"], "sparsity": [0.0], "epochs": [4],
                               "finetune_epochs": [0]}),
                         product({"seed": SEEDS})])
    pruned = Sweep(base, [METHODS, product({"sparsity": SPARSITIES, "seed": SEEDS})])
    return [dense, pruned]
