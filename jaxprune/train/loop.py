"""Train and evaluate a flax linen classifier with any optax optimizer (masked or not).

``TrainState`` is a NamedTuple of arrays (params, model state such as BatchNorm statistics, optimizer
state, step), so a jitted step takes and returns it whole. ``fit`` loops over epochs with the seeded
batch iterator of :mod:`jaxprune.data` and shows a tqdm bar (epoch, loss, accuracy).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxprune.data import batches, eval_batches, num_batches

__all__ = ["TrainState", "create_train_state", "make_train_step", "make_eval_step", "evaluate", "fit"]


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


def _call(model: Any, params: Any, model_state: Any, x: jax.Array, train: bool):
    variables = {"params": params, **model_state}
    takes_train = "train" in inspect.signature(type(model).__call__).parameters
    kwargs = {"train": train} if takes_train else {}
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

    def loss_fn(params, model_state, x, y):
        p = params if loss_transform is None else loss_transform(params)
        logits, new_state = _call(model, p, model_state, x, train=True)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (new_state, jnp.mean(jnp.argmax(logits, -1) == y))

    @jax.jit
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
        logits, _ = _call(model, params, model_state, x, train=False)
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
        ) -> tuple[TrainState, list[dict[str, float]]]:
    """Trains for ``epochs`` epochs; deterministic for a seed (batch order from ``(seed, epoch)``).

    ``on_epoch(epoch, state) -> state`` runs after each epoch (used e.g. by lottery-ticket rounds).
    Returns the final state and a per-epoch history of mean loss and accuracy.
    """
    step = make_train_step(model, tx, loss_transform)
    history = []
    steps = num_batches(len(labels), batch_size)
    bar = tqdm(total=epochs * steps, desc=desc, disable=not progress, leave=False, mininterval=0.5)
    for epoch in range(first_epoch, first_epoch + epochs):
        losses, accs = [], []
        for b in batches(images, labels, batch_size, seed=seed, epoch=epoch):
            state, loss, acc = step(state, b.images, b.labels)
            losses.append(loss)
            accs.append(acc)
            bar.update(1)
        record = {"epoch": epoch, "loss": float(np.mean(jax.device_get(losses))),
                  "accuracy": float(np.mean(jax.device_get(accs)))}
        history.append(record)
        bar.set_postfix(epoch=epoch, loss=f"{record['loss']:.4f}", acc=f"{record['accuracy']:.4f}")
        if on_epoch is not None:
            state = on_epoch(epoch, state)
    bar.close()
    return state, history
