"""The :class:`Run` context a method receives, and :func:`make_run` that builds it."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from jaxprune import data as jdata
from jaxprune.harness.schema import FIELDS
from jaxprune.harness.steps import check_structure_fits
from jaxprune.harness.trainer import SequentialTrainer, Trainer
from jaxprune.harness.validate import validate_config
from jaxprune.models import get_model, init_params

__all__ = ["Run", "make_run", "preflight", "toy_config", "toy_run"]


class Run(NamedTuple):
    """What a method needs: the config, model, data, a PRNG key and the trainer of its ``fit`` calls.

    A method treats it as read-only (``run._replace(model=...)`` for a shrunk model); the config is
    never changed in place, so what a run records is what it was asked to do.
    """

    config: Any
    model: Any
    variables: dict
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    key: jax.Array
    trainer: Trainer = SequentialTrainer()


def make_run(config: Any, trainer: Trainer | None = None) -> Run:
    """Validates an ``nn`` config, loads its data and initialises its model (no training yet).

    >>> import jaxprune.methods  # registers the methods (the harness never imports them)
    >>> run = make_run(toy_config(dataset='digits'))  # scikit-learn's bundled digits
    >>> run.train[0].shape, run.config.method
    ((1438, 8, 8, 1), 'one_shot')
    """
    validate_config(config)
    dataset = jdata.resolve_dataset(config.dataset, config.get("data_dir"))
    if dataset != config.dataset:
        config = config.copy_and_resolve_references()
        with config.unlocked():
            config.dataset = dataset
    info = jdata.dataset_info(dataset, config.get("data_dir"))
    train = jdata.load(dataset, "train", config.get("data_dir"),
                       validation_size=config.get("validation_size", 0), seed=config.seed)
    test = jdata.load(dataset, "test", config.get("data_dir"))
    model = get_model(config.model, info.num_classes)
    key = jax.random.PRNGKey(config.seed)
    variables = init_params(model, jax.random.fold_in(key, 0), (1, *train[0].shape[1:]))
    run = Run(config, model, variables, train, test, jax.random.fold_in(key, 1),
              SequentialTrainer() if trainer is None else trainer)
    check_structure_fits(config, variables["params"])
    return run


def preflight(config: Any) -> None:
    """Every check of :func:`make_run` that needs no data: the fields, then whether the structure fits
    the model (built from the data set's metadata, initialised, pruned once; nothing trains).

    A sweep runs it on every config before its first run. ``dataset='auto'`` must be resolved first.
    """
    validate_config(config)
    if config.get("kind", "nn") != "nn" or config.method == "none" or \
            config.structure in ("unstructured", "neurons", "channels", "heads"):
        return
    info = jdata.dataset_info(config.dataset, config.get("data_dir"))
    model = get_model(config.model, info.num_classes)
    variables = init_params(model, jax.random.PRNGKey(0), (1, *info.image_shape))
    check_structure_fits(config, variables["params"])


def toy_config(**overrides: Any) -> Any:
    """A complete ``nn`` config: every field's default (:data:`~jaxprune.harness.schema.FIELDS`),
    one short epoch at batch 16 without progress bars, then ``overrides``.

    >>> toy_config(sparsity=0.8).sparsity, toy_config().epochs
    (0.8, 1)
    """
    import ml_collections

    fields = {k: spec.default for k, spec in FIELDS.items()}
    fields.update(dataset="digits", epochs=1, batch_size=16, latency_batch=0, progress=False)
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)


def toy_run(examples: int = 64, **overrides: Any) -> Run:
    """A :class:`Run` on ``examples`` random 8x8 images (10 classes) with the tutorial MLP and
    :func:`toy_config` (``overrides``): for examples and tests of methods, no data files read.

    >>> run = toy_run(sparsity=0.5)
    >>> run.train[0].shape, run.test[1].shape, sorted(run.variables)
    ((64, 8, 8, 1), (64,), ['params'])
    """
    config = toy_config(**overrides)
    rng = np.random.default_rng(config.seed)
    x = rng.normal(size=(examples, 8, 8, 1)).astype(np.float32)
    y = (np.arange(examples) % 10).astype(np.int32)
    model = get_model(config.model, 10)
    key = jax.random.PRNGKey(config.seed)
    variables = init_params(model, jax.random.fold_in(key, 0), (1, 8, 8, 1))
    return Run(config, model, variables, (x, y), (x, y), jax.random.fold_in(key, 1))
