"""Pruning a linear SVM's ``w`` with the core pipeline: score → sparsity → masks → apply.

* **Criteria** — ``'magnitude'`` ``|w|`` and ``'saliency'`` ``|w·g|`` (SNIP), with ``g`` the gradient of
  the *data* loss (:func:`~jaxprune.svm.model.data_loss`, penalty left out). Why not the full objective:
  at its minimum its gradient is zero, so ``|w·g|`` would rank weights by optimiser noise. Note the
  consequence: at the exact optimum ``∇data_loss = −w/(C·n)``, so saliency ``= w²/(C·n)`` ranks weights
  exactly as magnitude does; the two differ only as far as training stopped short of the optimum.
* **Structures** — ``'weights'``: unstructured over ``w`` (each (feature, class) weight on its own;
  exact count ``round(s · n_features · n_outputs)``). ``'features'``: :class:`~jaxprune.Neurons` on axis 0,
  i.e. a whole row of ``w`` (one input feature, all classes) goes at once, scored by the mean over
  classes; exactly ``min(round(s · n_features), n_features − 1)`` features are dropped (one always
  stays), so the model reads fewer inputs.
* The bias ``b`` is never pruned (its mask is all-True).
* **Fine-tuning** re-trains with the mask: updates of pruned weights are zeroed, so they stay exactly 0.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.errors import PruningError
from jaxprune.masks import apply_masks
from jaxprune.scores import magnitude_scores, saliency_scores
from jaxprune.select import topk_masks
from jaxprune.structures import Neurons, Unstructured
from jaxprune.svm.model import (  # noqa: F401  (accuracy: used by the doctest)
    LOSSES,
    LinearSVM,
    check_hyper,
    accuracy,
    data_loss,
    fit_svm,
    ovr_targets,
)

__all__ = ["CRITERIA", "STRUCTURES", "svm_grads", "svm_scores", "svm_masks", "features_used", "finetune_svm",
           "prune_svm"]

CRITERIA = ("magnitude", "saliency")
STRUCTURES = ("weights", "features")


_grads = jax.jit(jax.grad(data_loss), static_argnames="loss")


def svm_grads(params: LinearSVM, X: Any, y: Any, loss: str = "squared_hinge") -> LinearSVM:
    """Gradient of the data loss (no penalty) w.r.t. ``params`` on standardised ``X``, labels ``y``.

    >>> p = LinearSVM(jnp.zeros((1, 1)), jnp.zeros(1))
    >>> svm_grads(p, np.array([[1.0], [-1.0]]), np.array([1, 0])).w.tolist()
    [[-2.0]]
    """
    if loss not in LOSSES:
        raise PruningError(f"loss must be one of {LOSSES}, got {loss!r}")
    Y = ovr_targets(jnp.asarray(y), params.w.shape[1])
    return _grads(params, jnp.asarray(X, jnp.float32), Y, loss)


def svm_scores(params: LinearSVM, X: Any = None, y: Any = None, *, criterion: str = "magnitude",
               loss: str = "squared_hinge") -> LinearSVM:
    """Importance scores (same tree as ``params``); ``'saliency'`` needs the training ``X, y``.

    >>> p = LinearSVM(jnp.array([[-2.0], [1.0]]), jnp.zeros(1))
    >>> svm_scores(p).w.tolist()
    [[2.0], [1.0]]
    """
    if criterion == "magnitude":
        return magnitude_scores(params)
    if criterion == "saliency":
        if X is None or y is None:
            raise PruningError("criterion 'saliency' needs the training data: pass X and y")
        return saliency_scores(params, svm_grads(params, X, y, loss))
    raise PruningError(f"criterion must be one of {CRITERIA}, got {criterion!r}")


def svm_masks(scores: LinearSVM, sparsity: Any, *, structure: str = "weights") -> LinearSVM:
    """Boolean masks (True = keep) pruning ``w`` at ``sparsity``; ``b`` stays all-True.

    >>> s = LinearSVM(jnp.array([[1.0, 2.0], [3.0, 4.0]]), jnp.zeros(2))
    >>> svm_masks(s, 0.5, structure='features').w.tolist()
    [[False, False], [True, True]]
    """
    if structure not in STRUCTURES:
        raise PruningError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    # Neurons(axis=0) on w (features, outputs): a unit is a row = one input feature for every class.
    # Those units are the model's inputs, so no leaf is an output layer (outputs=()).
    struct = Neurons(axis=0, outputs=()) if structure == "features" else Unstructured()
    return topk_masks(scores, scores._replace(w=sparsity, b=0.0), structure=struct)


def features_used(params: LinearSVM) -> int:
    """How many input features have a nonzero weight for at least one class.

    >>> features_used(LinearSVM(jnp.array([[0.0, 1.0], [0.0, 0.0]]), jnp.zeros(2)))
    1
    """
    return int(np.count_nonzero(np.any(np.asarray(params.w) != 0, axis=1)))


def finetune_svm(params: LinearSVM, mask: LinearSVM, X: Any, y: Any, *, steps: int = 300,
                 C: float = 0.1, loss: str = "squared_hinge", lr: float = 0.1) -> LinearSVM:
    """Re-trains from ``params`` with ``mask``: pruned weights get no updates and stay exactly 0.

    >>> X = np.array([[-2.0, 1.0], [-1.0, -1.0], [1.0, 1.0], [2.0, -1.0]]); y = np.array([0, 0, 1, 1])
    >>> m = LinearSVM(jnp.array([[True], [False]]), jnp.array([True]))
    >>> p = finetune_svm(LinearSVM(jnp.zeros((2, 1)), jnp.zeros(1)), m, X, y, steps=100)
    >>> float(p.w[1, 0]), accuracy(p, X, y)
    (0.0, 1.0)
    """
    n_classes = 2 if params.w.shape[1] == 1 else params.w.shape[1]
    return fit_svm(X, y, C=C, loss=loss, steps=int(steps), lr=lr, mask=mask, init=params, n_classes=n_classes)


def prune_svm(
    params: LinearSVM,
    X: Any,
    y: Any,
    sparsity: Any,
    *,
    criterion: str = "magnitude",
    structure: str = "weights",
    finetune_steps: int = 0,
    C: float = 0.1,
    loss: str = "squared_hinge",
    lr: float = 0.1,
) -> tuple[LinearSVM, LinearSVM]:
    """Prunes ``w`` (one shot) and optionally fine-tunes with the mask; returns ``(params, mask)``.

    ``X, y`` are the (standardised) training data: used for saliency gradients and fine-tuning. ``C``,
    ``loss`` and ``lr`` are those of :func:`~jaxprune.svm.model.fit_svm` for the fine-tuning run.

    >>> X = np.array([[-2.0, 0.1], [-1.0, -0.1], [1.0, 0.1], [2.0, -0.1]]); y = np.array([0, 0, 1, 1])
    >>> p, m = prune_svm(fit_svm(X, y), X, y, 0.5, finetune_steps=100)
    >>> m.w.tolist(), accuracy(p, X, y)
    ([[True], [False]], 1.0)
    """
    if criterion not in CRITERIA:
        raise PruningError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if structure not in STRUCTURES:
        raise PruningError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    check_hyper(C, loss, finetune_steps, lr)
    if not isinstance(params, LinearSVM):
        raise PruningError(f"params must be a LinearSVM, got {type(params).__name__}")
    scores = svm_scores(params, X, y, criterion=criterion, loss=loss)
    mask = svm_masks(scores, sparsity, structure=structure)
    pruned = apply_masks(params, mask)
    if finetune_steps:
        pruned = finetune_svm(pruned, mask, X, y, steps=finetune_steps, C=C, loss=loss, lr=lr)
    return pruned, mask

