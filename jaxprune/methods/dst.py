"""Dynamic sparse training: SET (Mocanu et al. 2018) and RigL (Evci et al. 2020); STE pruning.

SET and RigL keep the number of nonzeros of every pruned leaf exactly constant: each mask update
drops the ``k`` active weights of lowest magnitude and regrows ``k`` inactive ones — at random (SET) or
where the dense gradient is largest (RigL). ``k = round(f(t) · active)`` with the cosine-decayed
drop fraction ``f(t) = α/2 · (1 + cos(π t / T_end))``. Regrown weights start at exactly zero and,
through :func:`jaxprune.train.pruning`'s ``reset_moments``, with zeroed optimizer moments. Biases and norm
scales are never selected, so models with them work (jaxpruner's SET/RigL crash there on current JAX).

STE (straight-through estimator) keeps the dense weights and trains them with the gradient of the
*sparse* forward pass: :func:`ste_forward` is the ``loss_transform`` of the train step.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.allocate import erk_sparsity, uniform_sparsity
from jaxprune.errors import PruningError
from jaxprune.paths import Selector, leaf_paths, map_with_path, selected_paths
from jaxprune.scores import magnitude_scores, random_scores
from jaxprune.select import prune_lowest, topk_masks
from jaxprune.train.schedules import Schedule

__all__ = ["cosine_drop_fraction", "dst_schedule", "dst_update", "random_sparse_masks", "ste_forward",
           "magnitude_masks", "check_room_to_regrow"]


def cosine_drop_fraction(alpha: float, end: int) -> Callable[[Any], Any]:
    """``f(t) = α/2 (1 + cos(π t / end))`` for ``t <= end``, then 0 (Evci et al. 2020, Eq. 1).

    >>> f = cosine_drop_fraction(0.3, 100)
    >>> [round(float(f(t)), 3) for t in (0, 50, 100, 200)]
    [0.3, 0.15, 0.0, 0.0]
    """
    if not 0.0 <= alpha <= 1.0:
        raise PruningError(f"drop fraction alpha must be in [0, 1], got {alpha}")
    if end < 1:
        raise PruningError(f"drop fraction end must be >= 1, got {end}")

    def f(t):
        t = jnp.asarray(t, jnp.float32)
        return jnp.where(t <= end, alpha / 2 * (1 + jnp.cos(jnp.pi * t / end)), 0.0)

    return f


def dst_schedule(sparsity: float, *, every: int, end: int) -> Schedule:
    """Update masks every ``every`` steps in ``(0, end)`` at a constant target sparsity.

    >>> s = dst_schedule(0.9, every=10, end=100)
    >>> [bool(s.is_update(t)) for t in (0, 10, 15, 100)]
    [False, True, False, False]
    """
    if every < 1 or end < 1:
        raise PruningError(f"dst_schedule: every ({every}) and end ({end}) must be >= 1")
    return Schedule(lambda step, hp: hp["sparsity"],
                    lambda step, hp: (step > 0) & (step < hp["end"]) & (step % hp["every"] == 0),
                    {"sparsity": float(sparsity), "every": every, "end": end})


def _drop_grow(w, g, m, frac, key, regrow: str):
    n = m.size
    active = jnp.sum(m, dtype=jnp.int32)
    k = jnp.round(frac * active.astype(jnp.float32)).astype(jnp.int32)
    k = jnp.minimum(k, n - active + k)  # never more than there is room to regrow into
    # Drop: keep the (active - k) largest |w| among active weights (inactive ones rank lowest).
    (kept,) = prune_lowest([jnp.where(m, jnp.abs(w), -jnp.inf)], n - active + k)
    if regrow == "gradient":
        grow = jnp.abs(g)
    else:
        grow = jax.random.uniform(key, w.shape)
    # Grow: the k best inactive positions (kept weights rank highest and stay).
    (new,) = prune_lowest([jnp.where(kept, jnp.inf, grow)], n - active)
    return new


def dst_update(regrow: str, alpha: float = 0.3, end: int = 1000, *,
               include: Selector = None) -> Callable[..., Any]:
    """Mask update of SET (``regrow='random'``) or RigL (``regrow='gradient'``) for :func:`pruning`.

    >>> fn = dst_update('gradient', 0.3, 1000)
    >>> callable(fn)
    True
    """
    if regrow not in ("random", "gradient"):
        raise PruningError(f"dst_update: regrow must be 'random' (SET) or 'gradient' (RigL), got {regrow!r}")
    frac_fn = cosine_drop_fraction(alpha, end)

    def update(params, grads, masks, sparsity, step, key):
        del sparsity
        chosen = set(selected_paths(params, include))
        frac = frac_fn(step)
        leaves = jax.tree.leaves(params)
        keys = iter(jax.random.split(key, max(len(leaves), 1)))

        def one(path, w, g, m):
            k = next(keys)
            if path not in chosen:
                return m
            return _drop_grow(w, g, m, frac, k, regrow)

        return map_with_path(one, params, grads, masks)

    return update


def random_sparse_masks(params: Any, sparsity: float, key: jax.Array, *, allocation: str = "erk",
                        include: Selector = None) -> Any:
    """Random masks with ERK (default) or uniform per-layer sparsity: the start of SET/RigL and the
    ``static_sparse`` baseline. Every selected leaf must keep room to regrow (sparsity > 0).

    >>> m = random_sparse_masks({'w': jnp.ones((4, 4))}, 0.5, jax.random.PRNGKey(0), allocation='uniform',
    ...                         include='w')
    >>> int(m['w'].sum())
    8
    """
    alloc = {"erk": erk_sparsity, "uniform": uniform_sparsity}
    if allocation not in alloc:
        raise PruningError(f"allocation must be one of {sorted(alloc)}, got {allocation!r}")
    sparsities = alloc[allocation](params, sparsity, include=include)
    return topk_masks(random_scores(key, params), sparsities)


def check_room_to_regrow(masks: Any, params: Any, include: Selector = None) -> None:
    """Raises :class:`PruningError` naming a selected leaf with no zeros (nothing to regrow into)."""
    chosen = set(selected_paths(params, include))
    for path, m in zip(leaf_paths(params), jax.tree.leaves(masks)):
        if path in chosen and bool(np.all(np.asarray(m))):
            raise PruningError(
                f"leaf '{path}' is dense under this allocation: SET/RigL need zeros to regrow into "
                "(raise the sparsity, use allocation='uniform', or exclude the leaf)")


def magnitude_masks(params: Any, sparsity: Any, *, include: Selector = None) -> Any:
    """Layerwise magnitude masks at ``sparsity`` (uniform over the selected leaves)."""
    return topk_masks(magnitude_scores(params), uniform_sparsity(params, sparsity, include=include))


def ste_forward(sparsity: float, *, include: Selector = None) -> Callable[[Any], Any]:
    """``loss_transform`` for STE pruning: the forward uses the magnitude-pruned weights, the backward
    passes the gradient straight through to every dense weight (Bengio et al. 2013; as in jaxpruner's
    STE and Zhou et al. 2021). Masks are recomputed from the dense weights at every step.

    >>> f = ste_forward(0.5, include=lambda p, x: True)
    >>> f({'w': jnp.array([1.0, -3.0])})['w'].tolist()
    [0.0, -3.0]
    """

    def transform(params):
        masks = jax.lax.stop_gradient(magnitude_masks(params, sparsity, include=include))
        return jax.tree.map(lambda w, m: w + jax.lax.stop_gradient(jnp.where(m, w, 0.0) - w),
                            params, masks)

    return transform
