"""The demo sweep (``scripts/demo``): 3 pruning strategies x 4 sparsities x 2 seeds, plus a dense row
per seed, on the tutorial 784-128-10 MLP (``experiments/configs/seed_mlp.py``, ``dataset=auto``:
Fashion-MNIST when its files are found, else scikit-learn's digits). 26 runs.

Shortened so the whole sweep finishes in <= 5 minutes on a 2-core CPU: 1 epoch (not 5) at
``batch_size=128`` (not 32) and 1 fine-tuning epoch with the masks fixed (the dense baseline trains
2 epochs, the same budget), mask updates every 50 steps for gradual pruning, random pruning with a
uniform per-layer fraction, no latency measurement (``latency_batch=0``).

Measured: 108 s wall (106 s CPU) for all 26 runs on Fashion-MNIST with a cold compilation cache on
a 2-core CPU shared with other jobs (load 1.5-4). A rerun skips everything (seconds).

Without the Fashion-MNIST files the sweep runs on scikit-learn's digits with its own budget
(:data:`DIGITS_BUDGET`, printed when the sweep is built): 1 epoch at batch 128 is 11 steps on digits'
1 438 training images, which left dense at 68 % and one-shot magnitude at 50 % at 44 %. 20 epochs +
10 fine-tuning epochs at batch 32 (1 350 steps a run) give dense ~96.5 %, magnitude 50 % within 1 pp of
it and random 90 % ~25 pp below (``tests/test_example.py::test_demo_digits_budget``).

    jaxprune sweep experiments/sweeps/demo.py --workdir runs/demo
    jaxprune report runs/demo --best --max-drop 1.0
"""

import sys
from pathlib import Path

from jaxprune.config import load_config
from jaxprune.data import resolve_dataset
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


FASHION_BUDGET = {"epochs": 1, "finetune_epochs": 1, "batch_size": 128, "update_every": 50}
"""469 steps an epoch on Fashion-MNIST; gradual: 7 mask updates in the first 75 % of them."""
DIGITS_BUDGET = {"epochs": 20, "finetune_epochs": 10, "batch_size": 32, "update_every": 50}
"""45 steps an epoch on digits' 1 438 images; gradual: 13 mask updates in the first 675 steps."""


def budget(dataset: str) -> dict:
    """The demo's training budget for ``dataset`` (``'fashion_mnist'`` or the ``'digits'`` fallback)."""
    return dict(DIGITS_BUDGET if dataset == "digits" else FASHION_BUDGET)


def get_sweep():
    base = base_config()
    base.dataset = resolve_dataset("auto", base.data_dir)
    chosen = budget(base.dataset)
    if base.dataset == "digits":
        steps = (chosen["epochs"] + chosen["finetune_epochs"]) * -(-1438 // chosen["batch_size"])
        print(f"[demo] Fashion-MNIST not found: scikit-learn's digits with a budget for its 1 438 images: "
              f"{chosen['epochs']} epochs + {chosen['finetune_epochs']} fine-tuning at batch "
              f"{chosen['batch_size']} ({steps} steps a run)", file=sys.stderr)
    base.update(chosen)
    base.latency_batch = 0
    # The dense baseline gets the same number of training epochs as a pruned run.
    dense = Sweep(base, [zip_({"method": ["none"], "sparsity": [0.0],
                               "epochs": [chosen["epochs"] + chosen["finetune_epochs"]],
                               "finetune_epochs": [0]}),
                         product({"seed": SEEDS})])
    pruned = Sweep(base, [STRATEGIES, product({"sparsity": SPARSITIES}), product({"seed": SEEDS})])
    return [dense, pruned]
