"""Masked training: the pruning optax transformation, schedules and the train/eval loop."""

from jaxprune.train.loop import TrainState, create_train_state, evaluate, fit, make_eval_step, make_train_step
from jaxprune.train.schedules import Schedule, constant, iterative, never, one_shot, polynomial
from jaxprune.train.transform import (MaskUpdateFn, PruningState, SnapshotState, check_pruned_zero, get_masks,
                                      get_snapshot, masked, pruning, reset_where, set_target, snapshot)

__all__ = [
    "TrainState", "create_train_state", "evaluate", "fit", "make_eval_step", "make_train_step",
    "Schedule", "constant", "iterative", "never", "one_shot", "polynomial",
    "MaskUpdateFn", "PruningState", "check_pruned_zero", "get_masks", "masked", "pruning", "reset_where",
    "set_target", "SnapshotState", "snapshot", "get_snapshot",
]
