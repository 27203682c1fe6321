"""A linear SVM as a JAX pytree, trained full-batch with optax.

* **Params** — :class:`LinearSVM` ``(w: (n_features, n_outputs), b: (n_outputs,))``. Multi-class is
  one-vs-rest: ``n_outputs = n_classes`` and column ``k`` separates class ``k`` from the rest. Binary
  problems use **one** column (``n_outputs = 1``, positive = class 1), as scikit-learn's ``coef_`` does,
  so weight counts and sparsities compare one-to-one with ``LinearSVC``.
* **Objective** — scikit-learn's primal ``½‖w‖² + C·Σᵢ Σₖ ℓ(yᵢₖ fₖ(xᵢ))`` divided by ``C·n`` (same
  minimiser, gradients of order one whatever ``n`` is)::

      J(w, b) = meanᵢ Σₖ ℓ(yᵢₖ fₖ(xᵢ)) + ‖w‖² / (2·C·n),   yᵢₖ = ±1,  f(x) = x·w + b

  with ``ℓ(m) = max(0, 1 − m)²`` (``'squared_hinge'``, default: smooth, what ``LinearSVC`` uses) or
  ``max(0, 1 − m)`` (``'hinge'``). So ``C`` means what it means in scikit-learn (λ = 1/(C·n)); unlike
  liblinear the bias is not penalised.
* **Features** are standardised with a :class:`Scaler` fitted on the training split only; ``params``
  live in the standardised space (so ``|w|`` compares features fairly) and every function here takes
  standardised ``X``.
* **Training** — Adam with a cosine-decayed step size (to ``lr``/1000) for a fixed number of full-batch
  steps inside one jitted loop. ``C``, ``lr``, ``steps`` and the mask are traced: new values do not
  recompile.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune.errors import DataError, PruningError

__all__ = [
    "LinearSVM",
    "Scaler",
    "LOSSES",
    "fit_scaler",
    "standardize",
    "init_svm",
    "ovr_targets",
    "decision_function",
    "predict",
    "accuracy",
    "data_loss",
    "objective",
    "fit_svm",
]

LOSSES = ("squared_hinge", "hinge")


class LinearSVM(NamedTuple):
    """Linear SVM params: ``w`` (n_features, n_outputs), ``b`` (n_outputs,). Leaf paths 'w', 'b'.

    >>> LinearSVM(jnp.zeros((4, 3)), jnp.zeros(3)).w.shape
    (4, 3)
    """

    w: jax.Array
    b: jax.Array


class Scaler(NamedTuple):
    """Per-feature ``mean`` and ``scale`` of the training split (constant features get scale 1)."""

    mean: jax.Array
    scale: jax.Array


def fit_scaler(X: Any) -> Scaler:
    """Mean and standard deviation per feature of ``X`` (float64 on the host, stored as float32).

    >>> s = fit_scaler(np.array([[0.0, 5.0], [2.0, 5.0]]))
    >>> s.mean.tolist(), s.scale.tolist()
    ([1.0, 5.0], [1.0, 1.0])
    """
    X = _as_matrix(X, "X")
    mean, std = X.mean(axis=0), X.std(axis=0)
    # digits has always-blank pixels: dividing by 0 would make NaNs; such a feature stays 0 after centring.
    scale = np.where(std > 0, std, 1.0)
    return Scaler(jnp.asarray(mean, jnp.float32), jnp.asarray(scale, jnp.float32))


def standardize(scaler: Scaler, X: Any) -> jax.Array:
    """``(X - mean) / scale`` with a scaler fitted on the training split.

    >>> standardize(Scaler(jnp.array([1.0]), jnp.array([2.0])), np.array([[5.0]])).tolist()
    [[2.0]]
    """
    X = jnp.asarray(_as_matrix(X, "X"), jnp.float32)
    if X.shape[1] != scaler.mean.shape[0]:
        raise DataError(f"X has {X.shape[1]} features, the scaler was fitted on {scaler.mean.shape[0]}")
    return (X - scaler.mean[None, :]) / scaler.scale[None, :]


def _as_matrix(X: Any, name: str) -> np.ndarray:
    X = np.asarray(X, np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise DataError(f"{name} must be a non-empty 2-D array (samples, features), got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise DataError(f"{name} contains NaN or inf")
    return X


def _check_labels(y: Any, n: int, n_classes: Optional[int] = None) -> tuple[np.ndarray, int]:
    y = np.asarray(y)
    if y.shape != (n,):
        raise DataError(f"y must have shape ({n},) to match X, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise DataError("y must hold integer class indices 0 .. n_classes-1")
    k = int(y.max()) + 1 if n_classes is None else n_classes
    if k < 2 or int(y.max()) >= k:
        raise DataError(f"y must hold class indices in 0 .. {k - 1} with at least 2 classes")
    return y, k


def init_svm(key: jax.Array, n_features: int, n_classes: int) -> LinearSVM:
    """Small random ``w`` (the problem is convex: the seed only moves the start), zero ``b``.

    >>> init_svm(jax.random.PRNGKey(0), 5, 2).w.shape  # binary: one column
    (5, 1)
    """
    out = 1 if n_classes == 2 else n_classes
    w = 0.01 * jax.random.normal(key, (n_features, out), jnp.float32) / np.sqrt(n_features)
    return LinearSVM(w, jnp.zeros((out,), jnp.float32))


def ovr_targets(y: Any, n_outputs: int) -> jax.Array:
    """±1 one-vs-rest targets, shape (n, n_outputs); binary (one output): +1 for class 1.

    >>> ovr_targets(np.array([0, 2]), 3).tolist()
    [[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]]
    """
    y = jnp.asarray(y)
    if n_outputs == 1:
        return jnp.where(y == 1, 1.0, -1.0)[:, None]
    return jnp.where(y[:, None] == jnp.arange(n_outputs)[None, :], 1.0, -1.0)


def decision_function(params: LinearSVM, X: Any) -> jax.Array:
    """Scores ``X·w + b``, shape (n, n_outputs).

    >>> decision_function(LinearSVM(jnp.ones((2, 1)), jnp.ones(1)), jnp.ones((1, 2))).tolist()
    [[3.0]]
    """
    return jnp.asarray(X, jnp.float32) @ params.w + params.b[None, :]


@jax.jit
def _predict(params: LinearSVM, X: jax.Array) -> jax.Array:
    f = decision_function(params, X)
    if f.shape[1] == 1:
        return (f[:, 0] > 0).astype(jnp.int32)
    return jnp.argmax(f, axis=1).astype(jnp.int32)


def predict(params: LinearSVM, X: Any) -> jax.Array:
    """Class indices: arg-max one-vs-rest score, or ``score > 0`` for a one-column (binary) model.

    >>> predict(LinearSVM(jnp.array([[1.0]]), jnp.zeros(1)), jnp.array([[-2.0], [3.0]])).tolist()
    [0, 1]
    """
    return _predict(params, jnp.asarray(X, jnp.float32))


def accuracy(params: LinearSVM, X: Any, y: Any) -> float:
    """Fraction of ``y`` predicted right.

    >>> accuracy(LinearSVM(jnp.array([[1.0]]), jnp.zeros(1)), jnp.array([[-2.0], [3.0]]), np.array([0, 0]))
    0.5
    """
    return float(jnp.mean(predict(params, X) == jnp.asarray(y)))


def _margin_loss(margins: jax.Array, loss: str) -> jax.Array:
    slack = jnp.maximum(0.0, 1.0 - margins)
    return slack * slack if loss == "squared_hinge" else slack


def data_loss(params: LinearSVM, X: jax.Array, Y: jax.Array, loss: str = "squared_hinge") -> jax.Array:
    """``meanᵢ Σₖ ℓ(Yᵢₖ fₖ(xᵢ))`` for ±1 targets ``Y`` (no penalty): the loss saliency differentiates.

    >>> float(data_loss(LinearSVM(jnp.zeros((1, 1)), jnp.zeros(1)), jnp.ones((2, 1)), jnp.ones((2, 1))))
    1.0
    """
    return jnp.mean(jnp.sum(_margin_loss(Y * decision_function(params, X), loss), axis=1))


def objective(params: LinearSVM, X: jax.Array, Y: jax.Array, C: Any, loss: str = "squared_hinge") -> jax.Array:
    """Training objective ``data_loss + ‖w‖² / (2·C·n)`` (scikit-learn's primal / (C·n)).

    >>> float(objective(LinearSVM(jnp.ones((1, 1)), jnp.zeros(1)), jnp.ones((2, 1)), jnp.ones((2, 1)), 0.25))
    1.0
    """
    return data_loss(params, X, Y, loss) + jnp.sum(params.w * params.w) / (2.0 * C * X.shape[0])


def _keep_zeros(tree: Any, mask: LinearSVM) -> Any:
    return jax.tree.map(lambda u, m: jnp.where(m, u, jnp.zeros((), u.dtype)), tree, mask)


_FINAL_LR = 1e-3  # cosine decay ends at lr * 1e-3: Adam's last steps are small, so training settles.


@jax.jit(static_argnames=("loss",))
def _train(params: LinearSVM, mask: LinearSVM, X: jax.Array, Y: jax.Array, C: jax.Array, lr: jax.Array,
           steps: jax.Array, *, loss: str) -> LinearSVM:
    # optax.adam with a cosine schedule, spelled out so that `steps` can be traced: a new step count,
    # C, lr or mask reuses the compiled program.
    adam = optax.scale_by_adam()
    grad_fn = jax.grad(objective)

    def step(t, carry):
        p, state = carry
        updates, state = adam.update(grad_fn(p, X, Y, C, loss), state, p)
        frac = t.astype(jnp.float32) / jnp.maximum(steps, 1).astype(jnp.float32)
        rate = lr * (_FINAL_LR + (1.0 - _FINAL_LR) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac)))
        updates = jax.tree.map(lambda u: -rate * u, updates)
        # Mask the update, not the forward pass (DESIGN contract 6): pruned weights stay exactly 0.
        return optax.apply_updates(p, _keep_zeros(updates, mask)), state

    params = _keep_zeros(params, mask)  # once, so a fresh mask starts from zeros
    return jax.lax.fori_loop(0, steps, step, (params, adam.init(params)))[0]


def check_hyper(C: Any, loss: str, steps: Any, lr: Any) -> None:
    if loss not in LOSSES:
        raise PruningError(f"loss must be one of {LOSSES}, got {loss!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise PruningError(f"steps must be an integer >= 0, got {steps!r}")
    for name, v in (("C", C), ("lr", lr)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not v > 0 \
                or not np.isfinite(v):
            raise PruningError(f"{name} must be a finite number > 0, got {v!r}")


def fit_svm(
    X: Any,
    y: Any,
    *,
    C: float = 0.1,
    loss: str = "squared_hinge",
    steps: int = 1000,
    lr: float = 0.1,
    seed: int = 0,
    mask: Optional[LinearSVM] = None,
    init: Optional[LinearSVM] = None,
    n_classes: Optional[int] = None,
) -> LinearSVM:
    """Trains a one-vs-rest linear SVM on standardised ``X`` and labels ``y`` in ``0 .. K-1``.

    ``mask`` (a boolean :class:`LinearSVM`) keeps masked weights at exactly zero; ``init`` starts from
    given params instead of ``init_svm(PRNGKey(seed))`` (fine-tuning = ``init`` + ``mask``).

    >>> X = np.array([[-2.0], [-1.0], [1.0], [2.0]]); y = np.array([0, 0, 1, 1])
    >>> params = fit_svm(X, y, steps=200)
    >>> accuracy(params, X, y)
    1.0
    """
    check_hyper(C, loss, steps, lr)
    Xn = _as_matrix(X, "X")
    y, k = _check_labels(y, Xn.shape[0], n_classes)
    out = 1 if k == 2 else k
    if init is None:
        init = init_svm(jax.random.PRNGKey(seed), Xn.shape[1], k)
    if init.w.shape != (Xn.shape[1], out) or init.b.shape != (out,):
        raise PruningError(f"init has w {init.w.shape}, b {init.b.shape}; "
                           f"expected ({Xn.shape[1]}, {out}), ({out},)")
    if mask is None:
        mask = jax.tree.map(lambda a: jnp.ones(a.shape, bool), init)
    if jax.tree.map(jnp.shape, mask) != jax.tree.map(jnp.shape, init):
        raise PruningError("mask must be a LinearSVM of boolean arrays shaped like the params")
    init = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), init)
    mask = jax.tree.map(lambda m: jnp.asarray(m, bool), mask)
    return _train(init, mask, jnp.asarray(Xn, jnp.float32), ovr_targets(y, out),
                  jnp.float32(C), jnp.float32(lr), jnp.int32(steps), loss=loss)
