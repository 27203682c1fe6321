"""ShrinkBench's baselines (Blalock et al. 2020, "What is the state of neural network pruning?"):
one-shot pruning of a trained network by weight magnitude or magnitude x gradient (``saliency``,
|w * dL/dw|), each with one global threshold or a uniform per-layer fraction, plus random pruning,
at compression ratios 2, 4, 8, 16, 32 (sparsity 1 - 1/c), then fine-tuning. LeNet-300-100 on
``dataset=auto``, 2 seeds, plus a dense row per seed. 52 runs.

Shortened: 3 epochs of training + 1 of fine-tuning at batch 128 (the dense rows train 4), Adam 1e-3.
Plot against nonzeros (``accuracy_vs_nonzeros.png``) as ShrinkBench recommends.

Estimated time (2-core CPU; see docs/sweeps.md): ~13 min: timed single runs at 87.5 % (seed 1, cache
warm) took 16.4 s of CPU (saliency, global) and 12.9 s (magnitude, uniform); 52 x ~14.5 s.

    jaxprune sweep experiments/sweeps/shrinkbench_baselines.py --workdir runs/shrinkbench
    jaxprune report runs/shrinkbench --best
"""

from pathlib import Path

from jaxprune.config import load_config
from jaxprune.sweep import Sweep, cases, product, zip_


def base_config():
    """The base config (lenet300.py), imported by path: no sys.path edits."""
    return load_config(Path(__file__).resolve().parents[1] / "configs" / "lenet300.py")


SEEDS = [0, 1]
COMPRESSIONS = [2, 4, 8, 16, 32]
SPARSITIES = [1 - 1 / c for c in COMPRESSIONS]
STRATEGIES = cases([
    {"scorer": "magnitude", "allocation": "global"},  # GlobalMagWeight
    {"scorer": "magnitude", "allocation": "uniform"},  # LayerMagWeight
    {"scorer": "saliency", "allocation": "global"},  # GlobalMagGrad
    {"scorer": "saliency", "allocation": "uniform"},  # LayerMagGrad
    {"scorer": "random", "allocation": "uniform"},  # RandomPruning
])


def get_sweep():
    base = base_config()
    base.method = "one_shot"
    base.epochs = 3
    base.finetune_epochs = 1
    base.batch_size = 128
    base.latency_batch = 0
    dense = Sweep(base, [zip_({"method": ["none"], "sparsity": [0.0], "epochs": [4],
                               "finetune_epochs": [0]}),
                         product({"seed": SEEDS})])
    pruned = Sweep(base, [STRATEGIES, product({"sparsity": SPARSITIES, "seed": SEEDS})])
    return [dense, pruned]
