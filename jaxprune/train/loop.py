"""Train and evaluate a flax linen classifier with any optax optimizer (masked or not).

``TrainState`` is a NamedTuple of arrays (params, model state such as BatchNorm statistics, optimizer
state, step), so a jitted step takes and returns it whole. ``fit`` loops over epochs with the seeded
batch iterator of :mod:`jaxprune.data` and shows a tqdm bar (epoch, loss, accuracy). Inside a
:func:`~jaxprune.train.context.run_context` it also shards over a device mesh and checkpoints/resumes
(docs/scale.md).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import warnings
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jaxprune.data import batches, eval_batches, num_batches
from jaxprune.models.common import train_kwargs
from jaxprune.train.checkpoint import (CheckpointWarning, PhaseCheckpoint, Preempted, open_manager,
                                       preemption_guard, restore_phase, save_phase, tree_sha256)
from jaxprune.train.context import current_run
from jaxprune.train.parallel import (check_batch_size, shard_batch, shard_state, state_shardings,
                                     steps_ahead)

__all__ = ["TrainState", "create_train_state", "call_model", "make_train_step", "make_eval_step", "evaluate",
           "fit"]


class TrainState(NamedTuple):
    """Everything a step changes: ``params``, ``model_state`` (e.g. ``{'batch_stats': ...}``),
    ``opt_state`` and the ``step`` counter."""

    params: Any
    model_state: Any
    opt_state: Any
    step: jax.Array


def create_train_state(variables: dict, tx: optax.GradientTransformation) -> TrainState:
    """Splits linen ``variables`` into params and model state and initialises the optimizer.

    >>> from jaxprune.models import MLP, init_params
    >>> v = init_params(MLP((4, 2)), jax.random.PRNGKey(0), (1, 3))
    >>> st = create_train_state(v, optax.sgd(0.1))
    >>> int(st.step), sorted(st.model_state)
    (0, [])
    """
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    return TrainState(params, model_state, tx.init(params), jnp.zeros((), jnp.int32))


def call_model(model: Any, params: Any, model_state: Any, x: jax.Array, train: bool):
    """``(logits, model_state)`` of a linen-style ``model``: in train mode the mutable collections
    (BatchNorm statistics) are updated and returned, else ``model_state`` comes back as it is.

    >>> from jaxprune.models import MLP, init_params
    >>> v = init_params(MLP((4, 2)), jax.random.PRNGKey(0), (1, 3))
    >>> call_model(MLP((4, 2)), v['params'], {}, jnp.ones((1, 3)), train=True)[0].shape
    (1, 2)
    """
    variables = {"params": params, **model_state}
    kwargs = train_kwargs(model, train)
    if train and model_state:
        logits, new_state = model.apply(variables, x, mutable=list(model_state), **kwargs)
        return logits, dict(new_state)
    return model.apply(variables, x, **kwargs), model_state


def make_train_step(model: Any, tx: optax.GradientTransformation,
                    loss_transform: Optional[Callable[[Any], Any]] = None) -> Callable:
    """A jitted ``step(state, images, labels) -> (state, loss, accuracy)`` (softmax cross-entropy).

    ``loss_transform`` maps params before the forward pass (e.g. straight-through masking or
    fake quantization); by default the params are used as they are.
    """
    return jax.jit(_train_step_fn(model, tx, loss_transform))


def _train_step_fn(model: Any, tx: optax.GradientTransformation,
                   loss_transform: Optional[Callable[[Any], Any]]) -> Callable:
    """The un-jitted train step (``fit`` jits it with shardings when a mesh is given)."""

    def loss_fn(params, model_state, x, y):
        p = params if loss_transform is None else loss_transform(params)
        logits, new_state = call_model(model, p, model_state, x, train=True)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (new_state, jnp.mean(jnp.argmax(logits, -1) == y))

    def step(state: TrainState, x: jax.Array, y: jax.Array):
        (loss, (model_state, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.model_state, x, y)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, model_state, opt_state, state.step + 1), loss, acc

    return step


def make_eval_step(model: Any) -> Callable:
    """A jitted ``eval(params, model_state, images, labels, mask) -> (correct, loss_sum)``."""

    @jax.jit
    def step(params, model_state, x, y, mask):
        logits, _ = call_model(model, params, model_state, x, train=False)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        correct = (jnp.argmax(logits, -1) == y) & mask
        return jnp.sum(correct), jnp.sum(jnp.where(mask, loss, 0.0))

    return step


def evaluate(model: Any, params: Any, model_state: Any, images: np.ndarray, labels: np.ndarray,
             *, batch_size: int = 1000) -> dict[str, float]:
    """Accuracy and mean loss over every example exactly once (last batch padded and masked).

    >>> from jaxprune.models import MLP, init_params
    >>> v = init_params(MLP((4, 2)), jax.random.PRNGKey(0), (1, 3))
    >>> r = evaluate(MLP((4, 2)), v['params'], {}, np.zeros((5, 3), np.float32), np.zeros(5, np.int32))
    >>> sorted(r)
    ['accuracy', 'loss']
    """
    step = make_eval_step(model)
    correct, loss, n = 0, 0.0, len(labels)
    for b in eval_batches(images, labels, min(batch_size, max(n, 1))):
        c, s = step(params, model_state, b.images, b.labels, b.mask)
        correct += int(c)
        loss += float(s)
    return {"accuracy": correct / n, "loss": loss / n}


def fit(model: Any, state: TrainState, tx: optax.GradientTransformation, images: np.ndarray,
        labels: np.ndarray, *, epochs: int, batch_size: int, seed: int, first_epoch: int = 0,
        loss_transform: Optional[Callable[[Any], Any]] = None, desc: str = "train",
        progress: bool = True, on_epoch: Optional[Callable[[int, TrainState], TrainState]] = None,
        mesh: Any = None, checkpoint_dir: Optional[str | os.PathLike] = None,
        checkpoint_every: Optional[int] = None) -> tuple[TrainState, list[dict[str, float]]]:
    """Trains for ``epochs`` epochs; deterministic for a seed (batch order from ``(seed, epoch)``).

    ``on_epoch(epoch, state) -> state`` runs after each epoch (used e.g. by lottery-ticket rounds).
    Returns the final state and a per-epoch history of mean loss and accuracy.

    Scale-out and preemption (docs/scale.md); each defaults to the current
    :func:`~jaxprune.train.context.run_context`, where this call is one numbered phase:

    * ``mesh``: a :class:`jax.sharding.Mesh`; batches are split over its ``data`` axis and the state is
      placed by :func:`~jaxprune.train.parallel.leaf_spec` (replicated unless there is a ``model``
      axis). ``batch_size`` must divide by the ``data`` size.
    * ``checkpoint_dir``: save every ``checkpoint_every`` steps (0: only at the end) and at the end,
      and resume from the latest checkpoint found there: a finished phase returns its saved state and
      history without training. While checkpointing, SIGTERM saves the current state and raises
      :class:`~jaxprune.train.checkpoint.Preempted` (exit status 143).
    """
    ctx = current_run()
    phase = ctx.next_phase() if ctx is not None else None
    if ctx is not None:
        mesh = ctx.mesh if mesh is None else mesh
        checkpoint_dir = ctx.phase_dir(phase) if checkpoint_dir is None else checkpoint_dir
        checkpoint_every = ctx.checkpoint_every if checkpoint_every is None else checkpoint_every
    every = int(checkpoint_every or 0)
    steps = num_batches(len(labels), batch_size)
    total = epochs * steps
    state = jax.tree.map(jnp.asarray, state)
    if mesh is not None:
        check_batch_size(mesh, batch_size)
        state = shard_state(mesh, state)
        replicated = NamedSharding(mesh, PartitionSpec())
        step = jax.jit(_train_step_fn(model, tx, loss_transform),
                       out_shardings=(state_shardings(mesh, state), replicated, replicated))
        put = lambda b: shard_batch(mesh, b.images, b.labels)  # noqa: E731
        ahead = steps_ahead(mesh)  # XLA:CPU deadlocks a mesh 32 steps behind the host (docs/scale.md)
    else:
        ahead = None
        step = make_train_step(model, tx, loss_transform)
        put = lambda b: (b.images, b.labels)  # noqa: E731
    log = (ctx.log if ctx is not None else None) or (lambda message: None)
    name = desc if phase is None else f"phase {phase} ({desc})"
    fingerprint = {"desc": desc, "epochs": epochs, "first_epoch": first_epoch, "batch_size": batch_size,
                   "seed": seed, "examples": int(len(labels)), "steps_per_epoch": steps}
    history: list[dict[str, float]] = []
    losses: list[Any] = []
    accs: list[Any] = []
    done = 0
    with contextlib.ExitStack() as stack:
        manager, stop = None, None
        if checkpoint_dir is not None:
            manager = open_manager(checkpoint_dir)
            stack.callback(manager.close)
            restored = restore_phase(manager, state, fingerprint)
            if restored is not None:
                state, done, history = restored.state, restored.step, list(restored.history)
                losses, accs = list(restored.epoch_losses), list(restored.epoch_accs)
                log(f"[jaxprune] {name}: " + (
                    f"finished; restored its final state from {checkpoint_dir}" if restored.finished
                    else f"resuming at step {done} (epoch {first_epoch + restored.epoch}, batch "
                         f"{restored.batch}) from {checkpoint_dir}"))
                if on_epoch is not None and done > 0:
                    warnings.warn(f"{name}: resumed at step {done}; on_epoch hooks of the epochs before "
                                  "it are not replayed (their side effects are lost)", CheckpointWarning,
                                  stacklevel=2)
            stop = stack.enter_context(preemption_guard())

        def save(epoch_index: int, batch_index: int) -> None:
            finished = done == total
            ckpt = PhaseCheckpoint(state, done, epoch_index, batch_index, list(history),
                                   list(jax.device_get(losses)), list(jax.device_get(accs)), finished)
            save_phase(manager, ckpt, fingerprint, wait=stop.is_set())
            if stop.is_set():
                message = (f"[jaxprune] SIGTERM: saved {name} at step {done} in {checkpoint_dir}; "
                           "run the same command again to resume")
                log(message)
                raise Preempted(message)

        bar = tqdm(total=total, initial=done, desc=desc, disable=not progress, leave=False,
                   mininterval=0.5)
        stack.callback(bar.close)
        for e in range(done // steps, epochs):
            epoch = first_epoch + e
            skip = done - e * steps  # batches of this epoch taken before a resume
            if skip == 0:
                losses, accs = [], []
            it = batches(images, labels, batch_size, seed=seed, epoch=epoch)
            for i, b in enumerate(itertools.islice(it, skip, None), start=skip):
                state, loss, acc = step(state, *put(b))
                losses.append(loss)
                accs.append(acc)
                if ahead and len(losses) > ahead:
                    jax.block_until_ready(losses[-1 - ahead])
                done += 1
                bar.update(1)
                # The last batch of an epoch is saved after on_epoch (below), with the next position.
                due = stop is not None and (stop.is_set() or (every and done % every == 0))
                if due and i + 1 < steps:
                    save(e, i + 1)
            record = {"epoch": epoch, "loss": float(np.mean(jax.device_get(losses))),
                      "accuracy": float(np.mean(jax.device_get(accs)))}
            history.append(record)
            losses, accs = [], []
            bar.set_postfix(epoch=epoch, loss=f"{record['loss']:.4f}", acc=f"{record['accuracy']:.4f}")
            if on_epoch is not None:
                state = on_epoch(epoch, state)
            if stop is not None and (stop.is_set() or done == total or (every and done % every == 0)):
                save(e + 1, 0)
    if ctx is not None:
        ctx.digests.append(tree_sha256(state))
    return state, history
