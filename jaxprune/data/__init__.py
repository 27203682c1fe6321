"""Data for pruning experiments: named image sets as numpy arrays, and fixed-shape seeded batches.

See ``docs/data.md`` for the names, where files are looked for, the split rule and the batching rule.
"""

from jaxprune.data.idx import read_idx
from jaxprune.data.iterate import Batch, batches, epoch_order, eval_batches, num_batches
from jaxprune.data.mnist import ENV_VAR
from jaxprune.data.preprocess import channel_stats, standardize
from jaxprune.data.sources import (DATASETS, DEFAULT_VALIDATION_SIZE, SPLITS, DatasetInfo, dataset_info, load,
                                   resolve_dataset)

__all__ = [
    "DATASETS",
    "DEFAULT_VALIDATION_SIZE",
    "ENV_VAR",
    "SPLITS",
    "Batch",
    "DatasetInfo",
    "batches",
    "channel_stats",
    "dataset_info",
    "epoch_order",
    "eval_batches",
    "load",
    "num_batches",
    "read_idx",
    "resolve_dataset",
    "standardize",
]
