"""Pruning at initialization: SNIP, GraSP and SynFlow scores (higher = keep).

* SNIP (Lee et al. 2019): |w · ∂L/∂w| on one batch.
* GraSP (Wang et al. 2020): the paper scores S(−θ) = −θ ⊙ Hg and removes the weights with the highest
  S, i.e. those whose removal most reduces gradient flow; in jaxprune's keep-convention the score is
  θ ⊙ Hg. Hg is a Hessian-gradient product by forward-over-reverse differentiation.
* SynFlow (Tanaka et al. 2020): data-free. With every parameter replaced by its absolute value and an
  all-ones input, R = Σ f(1; |θ|); the score is |θ| ⊙ ∂R/∂|θ|. Applied iteratively (100 rounds by default)
  with the exponential schedule s_r = 1 − (1 − s)^(r/rounds), which avoids layer collapse.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from jaxprune.masks import dense_masks
from jaxprune.paths import Selector
from jaxprune.select import global_masks

__all__ = ["snip_scores", "grasp_scores", "synflow_scores", "synflow_masks"]


def snip_scores(loss_fn: Callable[[Any], jax.Array], params: Any) -> Any:
    """|w · ∂L/∂w| (SNIP connection sensitivity); ``loss_fn(params) -> scalar`` on one batch.

    >>> s = snip_scores(lambda p: jnp.sum(p['w'] ** 2), {'w': jnp.array([1.0, -2.0])})
    >>> s['w'].tolist()
    [2.0, 8.0]
    """
    grads = jax.grad(loss_fn)(params)
    return jax.tree.map(lambda w, g: jnp.abs(w * g), params, grads)


def grasp_scores(loss_fn: Callable[[Any], jax.Array], params: Any) -> Any:
    """θ ⊙ Hg (GraSP in keep-convention: the paper removes the highest −θ ⊙ Hg).

    >>> s = grasp_scores(lambda p: jnp.sum(p['w'] ** 3), {'w': jnp.array([1.0, 2.0])})
    >>> s['w'].tolist()  # g = 3w², H = 6w, Hg = 18 w³, θ·Hg = 18 w⁴
    [18.0, 288.0]
    """
    grad_fn = jax.grad(loss_fn)
    g = jax.lax.stop_gradient(grad_fn(params))
    hg = jax.jvp(grad_fn, (params,), (g,))[1]
    return jax.tree.map(lambda w, h: w * h, params, hg)


def synflow_scores(apply_fn: Callable[[Any, jax.Array], jax.Array], params: Any,
                   input_shape: Sequence[int]) -> Any:
    """|θ| ⊙ ∂R/∂|θ| with R = Σ apply_fn(|θ|, ones(input_shape)) (data-free SynFlow).

    >>> f = lambda p, x: x @ p['a'] @ p['b']
    >>> s = synflow_scores(f, {'a': -jnp.ones((2, 3)), 'b': jnp.ones((3, 1))}, (1, 2))
    >>> float(s['a'].sum()), float(s['b'].sum())  # conservation: equal per layer
    (6.0, 6.0)
    """
    abs_params = jax.tree.map(jnp.abs, params)
    x = jnp.ones(tuple(input_shape), jnp.float32)
    grads = jax.grad(lambda p: jnp.sum(apply_fn(p, x)))(abs_params)
    return jax.tree.map(lambda w, g: w * g, abs_params, grads)


def synflow_masks(apply_fn: Callable[[Any, jax.Array], jax.Array], params: Any,
                  input_shape: Sequence[int], sparsity: float, *, rounds: int = 100,
                  include: Selector = None) -> Any:
    """Iterative SynFlow masks; the last round removes exactly ``round(s · N)`` selected weights.

    Scores are computed in float64-free float32; scores of 0 (pruned) rank lowest.
    """
    masks = dense_masks(params)

    def body(r, masks):
        s_r = 1.0 - (1.0 - sparsity) ** ((r + 1.0) / rounds)
        masked = jax.tree.map(lambda w, m: jnp.where(m, w, 0.0), params, masks)
        scores = synflow_scores(apply_fn, masked, input_shape)
        return global_masks(scores, s_r, include=include)

    return jax.jit(lambda m: jax.lax.fori_loop(0, rounds, body, m))(masks)
