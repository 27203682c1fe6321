"""The demo sweep (``scripts/demo``): 3 pruning strategies x 4 sparsities x 2 seeds, plus a dense row
per seed, on the tutorial 784-128-10 MLP (``experiments/configs/seed_mlp.py``, ``dataset=auto``:
Fashion-MNIST when its files are found, else scikit-learn's digits). 26 runs.

Shortened so the whole sweep finishes in <= 5 minutes on a 2-core CPU: 1 epoch (not 5) at
``batch_size=128`` (not 32) and 1 fine-tuning epoch with the masks fixed (the dense baseline trains
2 epochs, the same budget), mask updates every 50 steps for gradual pruning, random pruning with a
uniform per-layer fraction, no latency measurement (``latency_batch=0``).

Measured: 108 s wall (106 s CPU) for all 26 runs on Fashion-MNIST with a cold compilation cache on
a 2-core CPU shared with other jobs (load 1.5-4). A rerun skips everything (seconds).

    jaxprune sweep experiments/sweeps/demo.py --workdir runs/demo
    jaxprune report runs/demo --best --max-drop 1.0
"""

from pathlib import Path

from jaxprune.config import load_config
from jaxprune.sweep import Sweep, cases, product, zip_


def base_config():
    """The base config (seed_mlp.py), imported by path: no sys.path edits."""
    return load_config(Path(__file__).resolve().parents[1] / "configs" / "seed_mlp.py")


SEEDS = [0, 1]
SPARSITIES = [0.5, 0.7, 0.9, 0.95]
STRATEGIES = cases([
    {"method": "one_shot", "scorer": "magnitude", "allocation": "global"},
    {"method": "one_shot", "scorer": "random", "allocation": "uniform"},
    {"method": "gradual_magnitude", "scorer": "magnitude", "allocation": "uniform"},
])


def get_sweep():
    base = base_config()
    base.epochs = 1
    base.batch_size = 128
    base.finetune_epochs = 1
    base.update_every = 50  # gradual: 7 mask updates in the first 75 % of the 469 steps
    base.latency_batch = 0
    # The dense baseline gets the same number of training epochs as a pruned run (1 + 1).
    dense = Sweep(base, [zip_({"method": ["none"], "sparsity": [0.0], "epochs": [2],
                               "finetune_epochs": [0]}),
                         product({"seed": SEEDS})])
    pruned = Sweep(base, [STRATEGIES, product({"sparsity": SPARSITIES}), product({"seed": SEEDS})])
    return [dense, pruned]
