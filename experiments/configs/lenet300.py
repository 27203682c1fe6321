"""LeNet-300-100 (LeCun et al. 1998; the network of Han et al. 2015 and the lottery-ticket papers).

    jaxprune run experiments/configs/lenet300.py sparsity=0.92 finetune_epochs=5 --workdir /tmp/r
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from seed_mlp import get_config as _seed  # noqa: E402


def get_config():
    config = _seed()
    config.model = "lenet300"
    config.epochs = 10
    config.sparsity = 0.9
    config.finetune_epochs = 3
    return config
