"""One-shot LM pruning (issue 18): magnitude / Wanda / SparseGPT x {50 %, 60 %, 70 %, 2:4, 4:8} x 3
calibration seeds on the Shakespeare GPT of ``experiments/configs/gpt_shakespeare.py``. 45 runs.

Every run points ``checkpoint_dir`` at ``<sweep workdir>/gpt_dense`` (relative paths are taken from
the run's own workdir, ``<sweep workdir>/runs/KEY``), so the first run trains the dense GPT and
checkpoints it and the other 44 restore it. The seeds vary the calibration windows
(``calibration_seed``), not the dense model. Shards may start together: training holds a lock on the
checkpoint, so one shard trains and the others wait and restore.

Measured (2-core CPU): 11 min 50 s for all 45 runs, of which 5.5 min is the dense training (2 000
steps; capped at 15 min by ``max_train_seconds``); docs/RESULTS.md has the report.

    jaxprune sweep experiments/sweeps/llm_oneshot.py --workdir runs/llm_oneshot
"""

from pathlib import Path

from jaxprune.config import load_config
from jaxprune.sweep import Sweep, cases, product

METHODS = ["magnitude", "wanda", "sparsegpt"]
SETTINGS = [{"structure": "unstructured", "sparsity": 0.5},
            {"structure": "unstructured", "sparsity": 0.6},
            {"structure": "unstructured", "sparsity": 0.7},
            {"structure": "nm:2:4", "sparsity": 0.5},
            {"structure": "nm:4:8", "sparsity": 0.5}]
CALIBRATION_SEEDS = [2, 3, 4]


def base_config():
    """The base config (gpt_shakespeare.py), imported by path, sharing one dense checkpoint."""
    base = load_config(Path(__file__).resolve().parents[1] / "configs" / "gpt_shakespeare.py")
    base.checkpoint_dir = "../../gpt_dense"
    return base


def get_sweep():
    return Sweep(base_config(), [cases(SETTINGS), product({"method": METHODS}),
                                 product({"calibration_seed": CALIBRATION_SEEDS})])
