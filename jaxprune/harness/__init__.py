"""The run harness: what every training-time method is built on, and nothing that is a method.

Data flows one way: core (``paths, scores, allocate, select, masks, train``) <- **harness** <-
methods (:mod:`jaxprune.methods`) <- experiment / sweep <- cli.

* :class:`Run` / :func:`make_run`: the context a method receives (config, model, data, key, trainer);
* steps, one public copy each: :func:`train_dense`, :func:`finetune_masked`, :func:`accuracy`,
  :func:`score_gradients`, :func:`prune` (and :func:`train`, :func:`masked_train`);
* trainers: :class:`SequentialTrainer` (``fit``) and :class:`GroupTrainer` (``fit_group``): a
  method is written once and runs alone or grouped with the same code;
* :class:`MethodOutput`, the typed output of a method; :func:`result_fields` / :func:`write_result`,
  the versioned result schema (docs/results_schema.md);
* :func:`register_method` / :data:`METHODS`.
"""

from jaxprune.harness.output import MethodOutput
from jaxprune.harness.precision import BITS, F16_LOSS_SCALE, PolicyModel, rewrap, unwrap, with_precision
from jaxprune.harness.registry import METHODS, MethodFn, get_method, register_method
from jaxprune.harness.results import (SCHEMA_VERSION, check_workdir, cost_fields, format_result,
                                      plain_result, result_fields, write_result)
from jaxprune.harness.run import Run, make_run, preflight, toy_config, toy_run
from jaxprune.harness.schema import FIELDS, FieldSpec, method_fields, validate_fields
from jaxprune.harness.steps import (accuracy, apply_and_evaluate, finetune_learning_rate, finetune_masked,
                                    masked_train, prune, run_structure, score_gradients, steps_per_epoch,
                                    dense_cache_key, train, train_dense)
from jaxprune.harness.trainer import GroupDiverged, GroupTrainer, SequentialTrainer, Trainer, run_in_group
from jaxprune.harness.validate import UNIT_CRITERIA, validate_config, validate_model, validate_stages

__all__ = ["MethodOutput", "BITS", "F16_LOSS_SCALE", "PolicyModel", "rewrap", "unwrap", "with_precision",
           "METHODS", "MethodFn", "get_method", "register_method", "SCHEMA_VERSION", "check_workdir",
           "cost_fields", "format_result", "plain_result", "result_fields", "write_result", "Run",
           "make_run", "preflight", "accuracy", "apply_and_evaluate",
           "finetune_learning_rate", "finetune_masked", "masked_train", "prune", "run_structure", "score_gradients",
           "steps_per_epoch", "train", "train_dense", "dense_cache_key", "UNIT_CRITERIA", "GroupDiverged",
           "GroupTrainer", "SequentialTrainer",
           "Trainer", "run_in_group", "validate_config", "validate_model", "validate_stages", "FIELDS", "FieldSpec",
           "method_fields", "validate_fields", "toy_config", "toy_run"]
