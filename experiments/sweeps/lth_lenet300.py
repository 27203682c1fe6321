"""Lottery tickets on LeNet-300-100 (Frankle & Carbin 2019, Fig. 3): iterative magnitude pruning
with rewinding to the original initialisation (``imp``) vs the same masks with a fresh random
initialisation (``imp_random_reinit``), at 1 - 0.8^k remaining for k = 3, 6, 9, 12, 15 rounds
(51.2, 26.2, 13.4, 6.9, 3.5 % of weights remain; 20 % per round, 10 % for the output layer, the
total exact), 2 seeds, plus a dense row per seed. 22 runs.

Shortened: each IMP round trains 1 epoch (the paper: 50 000 iterations at batch 60, ~50 epochs) at
batch 60 with Adam 1.2e-3 on ``dataset=auto`` (Fashion-MNIST here; the paper used MNIST). A run at k
rounds trains k + 1 times (``imp`` has no way to report the intermediate rounds), so the sweep trains
2 x 2 x (4 + 7 + 10 + 13 + 16) = 200 epochs. Plot with ``--log-x`` (remaining weights, log axis).

Estimated time (2-core CPU; see docs/sweeps.md): ~19 min: a timed ``imp`` run at k = 3 (4 trainings
of 1 epoch, seed 1, cache warm) took 23.0 s of CPU, ``imp_random_reinit`` 20.6 s, i.e. ~5.5 s per
training; 200 trainings + 2 dense runs.

    jaxprune sweep experiments/sweeps/lth_lenet300.py --workdir runs/lth
    jaxprune report runs/lth --log-x --best
"""

from pathlib import Path

from jaxprune.config import load_config
from jaxprune.sweep import Sweep, product, zip_


def base_config():
    """The base config (lenet300.py), imported by path: no sys.path edits."""
    return load_config(Path(__file__).resolve().parents[1] / "configs" / "lenet300.py")


SEEDS = [0, 1]
ROUNDS = [3, 6, 9, 12, 15]
# Exact 1 - 0.8**k (rounding them, e.g. to 0.7379, would make imp_rounds() add a round).
SPARSITIES = [1 - 0.8 ** k for k in ROUNDS]


def get_sweep():
    base = base_config()
    base.epochs = 1  # per IMP round
    base.batch_size = 60
    base.learning_rate = 1.2e-3
    base.finetune_epochs = 0
    base.imp_rate = 0.2
    base.imp_output_rate = 0.1
    base.rewind_epoch = 0
    base.latency_batch = 0
    dense = Sweep(base, [zip_({"method": ["none"], "sparsity": [0.0]}), product({"seed": SEEDS})])
    imp = Sweep(base, [product({"method": ["imp", "imp_random_reinit"], "sparsity": SPARSITIES,
                                "seed": SEEDS})])
    return [dense, imp]
