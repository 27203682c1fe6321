"""Structured pruning that shrinks the model for real, through the traced graph (docs/structure.md):
ResNet-18 (``resnet18_w16``: CIFAR stem, 16-32-64-128 channels) losing channels and the ViT
(``vit``: patch 7, width 64, 4 pre-LN blocks, 4 heads) losing neurons (residual width and MLP
hidden units), each at two sparsities that give about 2x and 4x fewer MACs, with units scored by
L2 norm, Taylor (|w * dL/dw| summed over the group) or at random, on ``dataset=auto``
(Fashion-MNIST when its files are found). Every run reports its accuracy before fine-tuning
(``pruned_test_accuracy``) and after (``test_accuracy``), so "with and without fine-tuning" comes
from the same run. One seed, plus a dense row per model. 14 runs.

MACs of the dense model over the shrunk one (``macs_dense / macs_nonzero_final`` of the runs; the
units removed do not depend on training, so the ratios are known before it): resnet18_w16 at 0.3
-> 2.06x, at 0.5 -> 3.98x; vit at 0.4 -> 1.96x, at 0.7 -> 4.10x.

Shortened: ResNet-18 trains 3 epochs + 1 of fine-tuning, the ViT 10 + 2, Adam 1e-3 at batch 128.
The dense phase is trained once per model and shared (``dense_cache_dir``, docs/sweeps.md).

Estimated time (2-core CPU): ~25 min (ResNet-18: ~163 s per dense epoch; the ViT: ~12 s).

    jaxprune sweep experiments/sweeps/structured.py --workdir runs/structured
    jaxprune report runs/structured
"""

from pathlib import Path

from jaxprune.config import load_config
from jaxprune.sweep import Sweep, product, zip_

CRITERIA = ["l2", "taylor", "random"]
SETUPS = {  # model: (structure, sparsities for ~2x and ~4x fewer MACs, epochs, finetune_epochs)
    "resnet18_w16": ("channels", [0.3, 0.5], 3, 1),
    "vit": ("neurons", [0.4, 0.7], 10, 2),
}


def base_config():
    """The base config (seed_mlp.py), imported by path: no sys.path edits."""
    return load_config(Path(__file__).resolve().parents[1] / "configs" / "seed_mlp.py")


def get_sweep():
    sweeps = []
    for model, (structure, sparsities, epochs, finetune) in SETUPS.items():
        base = base_config()
        base.model = model
        base.method = "one_shot"
        base.structure = structure
        base.shrink = True
        base.epochs = epochs
        base.finetune_epochs = finetune
        base.batch_size = 128
        base.latency_batch = 0  # accuracy vs FLOPs here; latency: scripts/bench_structure.py
        base.dense_cache_dir = "dense_cache"  # relative: under the sweep's --workdir
        dense = Sweep(base, [zip_({"method": ["none"], "sparsity": [0.0], "structure": ["unstructured"],
                                   "shrink": [False], "finetune_epochs": [0]})])
        pruned = Sweep(base, [product({"criterion": CRITERIA, "sparsity": sparsities})])
        sweeps += [dense, pruned]
    return sweeps
