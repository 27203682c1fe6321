"""LeNet-300-100 (LeCun et al. 1998; the network of Han et al. 2015 and the lottery-ticket papers).

    jaxprune run experiments/configs/lenet300.py sparsity=0.92 finetune_epochs=5 --workdir /tmp/r
"""

from pathlib import Path

from jaxprune.config import load_config


def _seed():
    """The base config (seed_mlp.py), imported by path: no sys.path edits."""
    return load_config(Path(__file__).with_name("seed_mlp.py"))


def get_config():
    config = _seed()
    config.model = "lenet300"
    config.epochs = 10
    config.sparsity = 0.9
    config.finetune_epochs = 3
    return config
