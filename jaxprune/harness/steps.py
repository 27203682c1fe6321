"""The steps methods are built from, one public copy each: train dense, fine-tune with fixed masks,
accuracy, score gradients, prune. Every training step goes through ``run.trainer`` (alone or grouped,
the method's code is the same)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import data as jdata
from jaxprune.errors import ConfigError, PruningError
from jaxprune.masks import apply_masks, summary
from jaxprune.recipes import parse_structure, select_masks
from jaxprune.scores import compute_scores, get_scorer, magnitude_scores
from jaxprune.train import TrainState, create_train_state, evaluate, masked
from jaxprune.harness.schema import FIELDS
from jaxprune.train.checkpoint import tree_sha256
from jaxprune.train.context import current_run
from jaxprune.train.loop import call_model
from jaxprune.workdir import checkpoint_lock
from jaxprune.wiring import output_kernels

__all__ = ["accuracy", "train", "train_dense", "dense_cache_key", "DENSE_INDEPENDENT", "finetune_masked",
           "masked_train", "finetune_learning_rate", "score_gradients", "prune", "steps_per_epoch",
           "run_structure"]


def accuracy(run: Any, params: Any, model_state: Any) -> float:
    """Test accuracy of ``params`` / ``model_state`` on the run's test split (every example once).

    >>> from jaxprune.harness import toy_run
    >>> run = toy_run()
    >>> 0.0 <= accuracy(run, run.variables['params'], {}) <= 1.0
    True
    """
    return evaluate(run.model, params, model_state, *run.test)["accuracy"]


def steps_per_epoch(run: Any) -> int:
    """Training steps per epoch (the last partial batch is dropped).

    >>> from jaxprune.harness import toy_run
    >>> steps_per_epoch(toy_run(examples=70, batch_size=16))
    4
    """
    return jdata.num_batches(len(run.train[1]), run.config.batch_size)


def train(run: Any, tx: optax.GradientTransformation, desc: str, *, variables: Optional[dict] = None,
          epochs: Optional[int] = None, first_epoch: int = 0, seed: Optional[int] = None,
          loss_transform: Optional[Callable[[Any], Any]] = None) -> TrainState:
    """A fresh state from ``variables`` (default: the run's initialisation) trained with ``tx`` for
    ``epochs`` (default: the config's) through the run's trainer.

    >>> from jaxprune.harness import toy_run
    >>> int(train(toy_run(), optax.sgd(0.1), "dense", epochs=2).step)  # 2 epochs of 4 batches
    8
    """
    state = create_train_state(run.variables if variables is None else variables, tx)
    return run.trainer.fit(run, state, tx, epochs=run.config.epochs if epochs is None else epochs,
                           first_epoch=first_epoch, seed=seed, desc=desc, loss_transform=loss_transform)


def train_dense(run: Any) -> TrainState:
    """Dense Adam training for ``epochs`` from the run's initialisation (the ``dense`` phase).

    With ``dense_cache_dir`` set, the phase is saved under ``dense_cache_dir/<dense_cache_key(run)>``
    and a later run with the same key (same data, model, init and training fields; any sparsity,
    criterion, method step after it) restores it bit for bit instead of training.

    >>> from jaxprune.harness import toy_run
    >>> int(train_dense(toy_run()).step)
    4
    """
    tx = optax.adam(run.config.learning_rate)
    cache = run.config.get("dense_cache_dir")
    if not cache or run.trainer.grouped:  # a vmapped group trains its dense phases together anyway
        return train(run, tx, "dense")
    directory = os.path.join(os.path.abspath(cache), dense_cache_key(run))
    log = current_run().log if current_run() is not None else None
    with checkpoint_lock(directory, log):  # one process trains, the others wait and restore
        state = create_train_state(run.variables, tx)
        return run.trainer.fit(run, state, tx, epochs=run.config.epochs, desc="dense",
                               checkpoint_dir=directory)


DENSE_INDEPENDENT = ("progress", "checkpoint_every", "dense_cache_dir", "latency_batch")
"""Config fields that never change the dense phase (besides the prune/finetune/quantize stages)."""


def dense_cache_key(run: Any) -> str:
    """The ``dense_cache_dir`` entry of a run's dense phase: a sha256 over every config field the
    dense phase may read (all but those of the prune, finetune, quantize and result stages and
    :data:`DENSE_INDEPENDENT`; unknown fields count), the initial variables and the training data.

    >>> from jaxprune.harness import toy_run
    >>> a = dense_cache_key(toy_run(sparsity=0.5))
    >>> a == dense_cache_key(toy_run(sparsity=0.9, criterion='l2', finetune_epochs=3))
    True
    >>> a == dense_cache_key(toy_run(learning_rate=0.01)), a == dense_cache_key(toy_run(seed=1))
    (False, False)
    """
    after = ("prune", "finetune", "quantize", "result")
    config = run.config.to_dict() if hasattr(run.config, "to_dict") else dict(run.config)
    fields = {k: v for k, v in config.items()
              if k not in DENSE_INDEPENDENT and (k not in FIELDS or FIELDS[k].stage not in after)}
    h = hashlib.sha256(json.dumps(fields, sort_keys=True, default=repr).encode())
    h.update(str(tree_sha256(run.variables)).encode())
    for a in run.train:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return "dense-" + h.hexdigest()[:20]


def finetune_learning_rate(config: Any) -> float:
    """``finetune_learning_rate``, or ``learning_rate`` when it is unset.

    >>> from jaxprune.harness import toy_config
    >>> finetune_learning_rate(toy_config()), finetune_learning_rate(toy_config(finetune_learning_rate=0.1))
    (0.001, 0.1)
    """
    return config.get("finetune_learning_rate") or config.learning_rate


def masked_train(run: Any, params: Any, model_state: Any, masks: Any, inner: optax.GradientTransformation,
                 *, epochs: int, first_epoch: int, desc: str,
                 loss_transform: Optional[Callable[[Any], Any]] = None) -> tuple[Any, Any]:
    """``inner`` with ``masks`` held fixed (:func:`jaxprune.train.masked`) for ``epochs`` from
    ``params`` / ``model_state``, epochs numbered from ``first_epoch``; returns ``(params, model_state)``.

    >>> from jaxprune.harness import toy_run
    >>> run = toy_run()
    >>> p = run.variables['params']
    >>> masks = jax.tree.map(lambda w: jnp.arange(w.size).reshape(w.shape) % 2 == 0, p)
    >>> p2, _ = masked_train(run, apply_masks(p, masks), {}, masks, optax.adam(0.1), epochs=1,
    ...                      first_epoch=0, desc="ft")
    >>> all(bool((w[~m] == 0).all()) for w, m in zip(jax.tree.leaves(p2), jax.tree.leaves(masks)))
    True
    """
    st = train(run, masked(inner, masks), desc, variables={"params": params, **model_state}, epochs=epochs,
               first_epoch=first_epoch, loss_transform=loss_transform)
    return st.params, st.model_state


def finetune_masked(run: Any, params: Any, model_state: Any, masks: Any, *, first_epoch: int,
                    epochs: Optional[int] = None, desc: str = "finetune") -> tuple[Any, Any]:
    """Masked Adam at :func:`finetune_learning_rate` for ``epochs`` (default ``finetune_epochs``) with
    ``masks`` held fixed; returns ``(params, model_state)`` (unchanged for 0 epochs).

    >>> from jaxprune.harness import toy_run
    >>> run = toy_run(finetune_epochs=0)
    >>> finetune_masked(run, 'p', 's', None, first_epoch=1)
    ('p', 's')
    """
    epochs = run.config.finetune_epochs if epochs is None else epochs
    if not epochs:
        return params, model_state
    return masked_train(run, params, model_state, masks, optax.adam(finetune_learning_rate(run.config)),
                        epochs=epochs, first_epoch=first_epoch, desc=desc)


def score_gradients(run: Any, params: Any, model_state: Any, batches: int = 1) -> Any:
    """Mean loss gradients over the first ``batches`` training batches (for gradient scorers).

    >>> from jaxprune.harness import toy_run
    >>> run = toy_run()
    >>> g = score_gradients(run, run.variables['params'], {}, batches=2)
    >>> jax.tree.structure(g) == jax.tree.structure(run.variables['params'])
    True
    """

    def loss(p, x, y):
        logits, _ = call_model(run.model, p, model_state, x, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grad_fn = jax.jit(jax.grad(loss))
    total = None
    it = jdata.batches(*run.train, run.config.batch_size, seed=run.config.seed, epoch=0)
    for _, b in zip(range(batches), it):
        g = grad_fn(params, b.images, b.labels)
        total = g if total is None else jax.tree.map(jnp.add, total, g)
    return jax.tree.map(lambda g: g / batches, total)


def run_structure(run: Any, params: Any, model_state: Any) -> Any:
    """The config's ``structure``; ``neurons`` / ``channels`` protect the model's output kernels, read
    off the traced forward pass (:func:`jaxprune.wiring.output_kernels`), so classes are never pruned.

    >>> from jaxprune.harness import toy_run
    >>> run = toy_run(structure='neurons')
    >>> run_structure(run, run.variables['params'], {}).outputs
    ['Dense_1/kernel']
    """
    c = run.config
    if c.structure not in ("neurons", "channels"):
        return parse_structure(c.structure)

    def forward(p: Any, x: Any) -> Any:
        return call_model(run.model, p, model_state, x, train=False)[0]

    return parse_structure(c.structure, outputs=output_kernels(forward, params, run.train[0][:1]))


def prune(run: Any, params: Any, model_state: Any, sparsity: float, *,
          allocation: Optional[str] = None) -> Any:
    """Masks from the run's scorer / allocation (or ``allocation``) / structure at ``sparsity``.

    >>> from jaxprune.harness import toy_run
    >>> run = toy_run(allocation='uniform')
    >>> masks = prune(run, run.variables['params'], {}, 0.75)
    >>> [round(1 - float(m.mean()), 2) for m in jax.tree.leaves(masks) if m.ndim == 2]
    [0.75, 0.75]
    """
    c = run.config
    grads = score_gradients(run, params, model_state) if get_scorer(c.scorer).needs_grads else None
    scores = compute_scores(c.scorer, params, grads=grads, key=jax.random.fold_in(run.key, 7))
    return select_masks(params, scores, sparsity,
                        allocation=c.allocation if allocation is None else allocation,
                        structure=run_structure(run, params, model_state))


def check_structure_fits(c: Any, params: Any) -> None:
    """Prunes a model's *initial* ``params`` once with magnitude scores and the config ``c``'s
    allocation and structure: a structure that does not fit a leaf (``nm:2:4`` on a 10-unit output
    layer) or a target an N:M pattern cannot reach is a :class:`ConfigError` before any training.

    Structured neuron/channel runs (their own path) and ``method='none'`` are not checked.

    >>> import ml_collections
    >>> cfg = ml_collections.ConfigDict(dict(method='one_shot', structure='nm:2:4', model='m',
    ...                                      allocation='uniform', sparsity=0.5))
    >>> check_structure_fits(cfg, {'fc': {'kernel': jnp.ones((8, 4))}})
    >>> cfg.sparsity = 0.1
    >>> check_structure_fits(cfg, {'fc': {'kernel': jnp.ones((8, 4))}})
    Traceback (most recent call last):
    ...
    jaxprune.errors.ConfigError: config fields 'structure'='nm:2:4', 'allocation'='uniform' and 'sparsity'=0.1: the masks would remove 0.500 of the prunable weights, not the target (an N:M pattern fixes each pruned leaf's sparsity)
    """
    if c.method == "none" or c.structure in ("neurons", "channels", "heads") or c.structure == "unstructured":
        return
    try:
        masks = select_masks(params, magnitude_scores(params), c.sparsity, allocation=c.allocation,
                             structure=parse_structure(c.structure))
    except PruningError as err:
        raise ConfigError(f"config field 'structure'={c.structure!r} does not fit model "
                          f"{c.model!r}: {err}") from err
    achieved = summary(masks).prunable["sparsity"]
    if abs(achieved - float(c.sparsity)) > 0.02:
        raise ConfigError(f"config fields 'structure'={c.structure!r}, 'allocation'={c.allocation!r} and "
                          f"'sparsity'={c.sparsity}: the masks would remove {achieved:.3f} of the prunable "
                          "weights, not the target (an N:M pattern fixes each pruned leaf's sparsity)")


def apply_and_evaluate(run: Any, params: Any, model_state: Any, masks: Any) -> tuple[Any, float]:
    """``(params * masks, accuracy of the pruned params)``.

    >>> from jaxprune.harness import toy_run
    >>> run = toy_run()
    >>> p = run.variables['params']
    >>> pruned, acc = apply_and_evaluate(run, p, {}, jax.tree.map(lambda w: w > 0, p))
    >>> bool(jax.tree.leaves(pruned)[0].min() >= 0) and 0.0 <= acc <= 1.0
    True
    """
    params = apply_masks(params, masks)
    return params, accuracy(run, params, model_state)


__all__ += ["apply_and_evaluate", "check_structure_fits"]
