"""Masked training: the pruning optax transformation, schedules and the train/eval loop."""

from jaxprune.train.loop import TrainState, create_train_state, evaluate, fit, make_eval_step, make_train_step
from jaxprune.train.schedules import Schedule, constant, iterative, never, one_shot, polynomial
from jaxprune.train.transform import MaskUpdateFn, PruningState, get_masks, masked, pruning, reset_where

__all__ = [
    "TrainState", "create_train_state", "evaluate", "fit", "make_eval_step", "make_train_step",
    "Schedule", "constant", "iterative", "never", "one_shot", "polynomial",
    "MaskUpdateFn", "PruningState", "get_masks", "masked", "pruning", "reset_where",
]
