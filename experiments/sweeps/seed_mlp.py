"""The seed example as a table: global magnitude vs random one-shot pruning of the tutorial
784-128-10 MLP at 50/70/80/90/95 % sparsity, 3 seeds, plus a dense row per seed. 33 runs.

Same training as ``experiments/configs/seed_mlp.py`` (Adam 1e-3, 5 epochs, batch 32, ``dataset=auto``)
with 2 fine-tuning epochs after pruning (the dense rows train 5 + 2 = 7 epochs, the same budget).
No latency measurement (``latency_batch=0``).

Estimated time (2-core CPU; see docs/sweeps.md for how it was measured): ~12 min: a timed single run
(one-shot magnitude 90 %, seed 1, compilation cache warm) took 21.6 s of CPU, a dense run 19.9 s; 33
x ~21 s + ~15 s of first compiles.

    jaxprune sweep experiments/sweeps/seed_mlp.py --workdir runs/seed_mlp
    jaxprune report runs/seed_mlp --best --max-drop 1.0
"""

from pathlib import Path

from jaxprune.config import load_config
from jaxprune.sweep import Sweep, product, zip_


def base_config():
    """The base config (seed_mlp.py), imported by path: no sys.path edits."""
    return load_config(Path(__file__).resolve().parents[1] / "configs" / "seed_mlp.py")


SEEDS = [0, 1, 2]
SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95]


def get_sweep():
    base = base_config()
    base.finetune_epochs = 2
    base.latency_batch = 0
    dense = Sweep(base, [zip_({"method": ["none"], "sparsity": [0.0], "epochs": [7],
                               "finetune_epochs": [0]}),
                         product({"seed": SEEDS})])
    pruned = Sweep(base, [product({"scorer": ["magnitude", "random"], "sparsity": SPARSITIES,
                                   "seed": SEEDS})])
    return [dense, pruned]
