"""Pruning at initialization (PaI): SNIP, GraSP and SynFlow scores and masks (higher score = keep).

* SNIP (Lee et al. 2019, "SNIP: Single-shot Network Pruning based on Connection Sensitivity"):
  |θ ⊙ ∂L/∂θ| on one batch.
* GraSP (Wang et al. 2020, "Picking Winning Tickets Before Training by Preserving Gradient Flow"):
  the paper's score is S(−θ) = −θ ⊙ Hg, with H the Hessian and g the gradient of the loss.
  Zeroing weight i is the step δ = −θ_i e_i, and to first order ‖g(θ + δ)‖² ≈ ‖g‖² + 2 δᵀHg =
  ‖g‖² + 2 S_i: S_i is half the change of the squared gradient norm when weight i goes. The paper
  removes the weights with the *highest* S (their removal keeps, or even raises, the gradient flow);
  the official code keeps ``-θ·Hg <= threshold``. In jaxprune's convention (the lowest scores go) the
  score is therefore −S = θ ⊙ Hg. Hg is computed by forward-over-reverse differentiation,
  ``jvp(grad L, (θ,), (g,))``, one extra pass instead of a Hessian. The paper divides the logits by a
  temperature (T = 200) before the loss; it is not needed here: fold it into ``loss_fn`` if wanted.
* SynFlow (Tanaka et al. 2020, "Pruning neural networks without any data by iteratively conserving
  synaptic flow"): data-free. Every parameter is replaced by its absolute value and an all-ones input
  goes through: R = Σ f(1; |θ|); the score is |θ| ⊙ ∂R/∂|θ| (nonnegative). For a bias-free
  linear/ReLU chain the scores of every layer sum to R (the paper's conservation theorem), so large
  layers get small per-weight scores. Pruning iteratively with the exponential schedule
  s_r = 1 − (1 − s)^(r/rounds), r = 1..rounds, rescoring the masked network each round, avoids layer
  collapse (a whole layer pruned away), which one-shot global SNIP or magnitude can suffer.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxprune.counts import check_sparsity_value
from jaxprune.errors import PruningError
from jaxprune.masks import dense_masks
from jaxprune.paths import Selector, map_with_path, matches
from jaxprune.recipes import ALLOCATIONS
from jaxprune.scores import magnitude_scores, random_scores
from jaxprune.select import global_masks, topk_masks

__all__ = ["snip_scores", "grasp_scores", "synflow_scores", "synflow_masks", "pai_masks", "PAI_METHODS"]

PAI_METHODS = ("snip", "grasp", "synflow", "random", "magnitude")

LossFn = Callable[..., jax.Array]
ApplyFn = Callable[[Any, jax.Array], jax.Array]


def _bind(loss_fn: LossFn, batch: Any) -> Callable[[Any], jax.Array]:
    # batch=None keeps the closure form loss_fn(params), used by `jaxprune run method=snip|grasp`.
    return loss_fn if batch is None else (lambda p: loss_fn(p, batch))


def snip_scores(loss_fn: LossFn, params: Any, batch: Any = None) -> Any:
    """SNIP connection sensitivity |θ ⊙ ∂L/∂θ| on one batch (Lee et al. 2019).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` (or ``loss_fn(params)`` when ``batch`` is None).
      params: the initial parameters (any pytree).
      batch: one batch of data, passed through to ``loss_fn``.

    Returns:
      A scores tree like ``params``. Jit with ``jax.jit(snip_scores, static_argnums=0)``.

    >>> loss = lambda p, b: jnp.sum(b * p['w'] ** 2)
    >>> snip_scores(loss, {'w': jnp.array([1.0, -2.0])}, jnp.array([1.0, 1.0]))['w'].tolist()
    [2.0, 8.0]
    """
    grads = jax.grad(_bind(loss_fn, batch))(params)
    return jax.tree.map(lambda w, g: jnp.abs(w * g), params, grads)


def grasp_scores(loss_fn: LossFn, params: Any, batch: Any = None, *,
                 restrict_to: Optional[Selector] = None) -> Any:
    """GraSP keep-scores θ ⊙ Hg (Wang et al. 2020; the paper removes the highest −θ ⊙ Hg).

    Hg is the Hessian-gradient product, by forward-over-reverse:
    ``jvp(grad L, (θ,), (stop_gradient(g),))``. See the module docstring for the sign.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` (or ``loss_fn(params)`` when ``batch`` is None).
      params: the initial parameters.
      batch: one batch of data.
      restrict_to: ``None`` (default) uses the gradient of every leaf as the direction g. A selector
        (e.g. ``jaxprune.kernels``) zeroes g outside the chosen leaves, so the score of a chosen leaf
        is θ ⊙ (H_ww g_w), as the official code does (g only over conv/linear weights).

    >>> loss = lambda p, b: jnp.sum(p['w'] ** 3) * b
    >>> grasp_scores(loss, {'w': jnp.array([1.0, 2.0])}, 1.0)['w'].tolist()  # g=3w², H=6w: 18w⁴
    [18.0, 288.0]
    """
    grad_fn = jax.grad(_bind(loss_fn, batch))
    g = jax.lax.stop_gradient(grad_fn(params))
    if restrict_to is not None:
        g = map_with_path(lambda p, x: x if matches(restrict_to, p, x) else jnp.zeros_like(x), g)
    hg = jax.jvp(grad_fn, (params,), (g,))[1]
    return jax.tree.map(lambda w, h: w * h, params, hg)


def _float_dtype(params: Any) -> Any:
    floats = [x for x in jax.tree.leaves(params) if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
    return jnp.result_type(*floats) if floats else jnp.float32


def synflow_scores(apply_fn: ApplyFn, params: Any, input_shape: Sequence[int]) -> Any:
    """SynFlow scores |θ| ⊙ ∂R/∂|θ|, R = Σ apply_fn(|θ|, ones(input_shape)) (Tanaka et al. 2020).

    Data-free and nonnegative. ``input_shape`` includes the batch dimension (``(1, 28, 28, 1)``). The
    model must be deterministic and batch-independent (BatchNorm in inference mode, no dropout).
    Scores are products along paths: very deep nets can overflow float32 (run under
    ``jax.enable_x64`` with float64 params, as the authors do in double precision).

    >>> f = lambda p, x: x @ p['a'] @ p['b']
    >>> s = synflow_scores(f, {'a': -jnp.ones((2, 3)), 'b': jnp.ones((3, 1))}, (1, 2))
    >>> float(s['a'].sum()), float(s['b'].sum())  # conservation: every layer sums to R
    (6.0, 6.0)
    """
    abs_params = jax.tree.map(jnp.abs, params)
    x = jnp.ones(tuple(int(d) for d in input_shape), _float_dtype(params))
    grads = jax.grad(lambda p: jnp.sum(apply_fn(p, x)))(abs_params)
    return jax.tree.map(lambda w, g: w * g, abs_params, grads)


def _check_allocation(allocation: str) -> None:
    if allocation not in ALLOCATIONS:
        raise PruningError(f"allocation={allocation!r} is unknown; known: {sorted(ALLOCATIONS)}")


def _select(params: Any, scores: Any, sparsity: Any, allocation: str, include: Selector) -> Any:
    if allocation == "global":
        return global_masks(scores, sparsity, include=include)
    return topk_masks(scores, ALLOCATIONS[allocation](params, sparsity, include=include))


def _masked_scores(apply_fn: ApplyFn, input_shape: tuple[int, ...], params: Any, masks: Any) -> Any:
    masked = jax.tree.map(lambda w, m: jnp.where(m, w, jnp.zeros((), w.dtype)), params, masks)
    scores = synflow_scores(apply_fn, masked, input_shape)
    # Pruned weights rank strictly lowest, so a growing s_r only ever removes more weights (a
    # surviving weight whose score is also 0 cannot swap places with a pruned one).
    return jax.tree.map(lambda s, m: jnp.where(m, s, -jnp.inf), scores, masks)


def _synflow_rounds(apply_fn: ApplyFn, input_shape: tuple[int, ...], rounds: int, include: Selector,
                    allocation: str, params: Any, sparsity: jax.Array) -> Any:
    """Rounds 1 .. rounds-1 in one loop; returns the masked scores for the last round."""

    def body(r, masks):
        s_r = 1.0 - (1.0 - sparsity) ** ((r + 1.0) / rounds)
        return _select(params, _masked_scores(apply_fn, input_shape, params, masks), s_r, allocation,
                       include)

    masks = jax.lax.fori_loop(0, rounds - 1, body, dense_masks(params))
    return _masked_scores(apply_fn, input_shape, params, masks)


_STATIC = ("apply_fn", "input_shape", "rounds", "include", "allocation")
_synflow_rounds_jit = jax.jit(_synflow_rounds, static_argnames=_STATIC)


def synflow_masks(apply_fn: ApplyFn, params: Any, input_shape: Sequence[int], sparsity: Any, *,
                  rounds: int = 100, include: Selector = None, allocation: str = "global") -> Any:
    """Iterative SynFlow masks (Tanaka et al. 2020, Algorithm 1), all rounds in one jitted loop.

    Round r = 1..rounds zeroes the masked weights, rescores with :func:`synflow_scores` and keeps the
    top scores at s_r = 1 − (1 − s)^(r/rounds). The last round selects at ``sparsity`` itself, so the
    selected leaves lose exactly ``round_half_even(sparsity · N)`` weights (layerwise allocations:
    that leaf's count). ``sparsity`` is a traced argument: a new target does not recompile (when
    ``apply_fn`` and ``include`` are hashable; a list ``include`` is turned into a tuple).

    Args:
      apply_fn: ``apply_fn(params, x) -> logits``; deterministic (inference mode).
      params: the initial parameters.
      input_shape: shape of the all-ones input, batch dimension included.
      sparsity: target fraction of the selected weights to remove, in [0, 1].
      rounds: number of prune-rescore rounds (the paper uses 100).
      include: selector of the leaves to prune (default: kernels); other leaves stay dense.
      allocation: ``'global'`` (the paper: one threshold) or ``'uniform'``/``'erk'``/``'er'``.

    >>> f = lambda p, x: x @ p['a'] @ p['b']
    >>> p = {'a': jnp.ones((4, 8)), 'b': jnp.ones((8, 2))}
    >>> m = synflow_masks(f, p, (1, 4), 0.75, rounds=10, include=['a', 'b'])
    >>> int(m['a'].sum() + m['b'].sum())
    12
    """
    check_sparsity_value(sparsity, "sparsity")
    _check_allocation(allocation)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise PruningError(f"synflow_masks: rounds must be an int >= 1, got {rounds!r}")
    if isinstance(include, list):
        include = tuple(include)
    shape = tuple(int(d) for d in input_shape)
    try:
        hash((apply_fn, include))
        rounds_fn = functools.partial(_synflow_rounds_jit, apply_fn=apply_fn, input_shape=shape,
                                      rounds=rounds, include=include, allocation=allocation)
    except TypeError:  # unhashable static arguments: compile for this call only
        rounds_fn = jax.jit(functools.partial(_synflow_rounds, apply_fn, shape, rounds, include,
                                              allocation))
    scores = rounds_fn(params=params, sparsity=jnp.asarray(sparsity, jnp.float32))
    # The last selection uses ``sparsity`` as given (a concrete float stays exact on the host, not
    # rounded to float32), so its count is the core's round_half_even(s * N).
    return _select(params, scores, sparsity, allocation, include)


_JITTED = {f.__name__: jax.jit(f, static_argnums=0) for f in (snip_scores, grasp_scores)}


def _maybe_jit(score_fn: Callable[..., Any], loss_fn: LossFn) -> Callable[[Any, Any], Any]:
    # One compiled program instead of op-by-op dispatch; an unhashable loss_fn cannot be a static
    # argument, so it runs eagerly.
    try:
        hash(loss_fn)
    except TypeError:
        return functools.partial(score_fn, loss_fn)
    return functools.partial(_JITTED[score_fn.__name__], loss_fn)


def pai_masks(
    method: str,
    loss_fn: Optional[LossFn],
    apply_fn: Optional[ApplyFn],
    params: Any,
    batch: Any,
    input_shape: Optional[Sequence[int]],
    sparsity: Any,
    *,
    allocation: str = "global",
    include: Selector = None,
    rounds: int = 100,
    key: Optional[jax.Array] = None,
) -> Any:
    """Masks from one pruning-at-init method: ``'snip' | 'grasp' | 'synflow' | 'random' | 'magnitude'``.

    snip/grasp need ``loss_fn(params, batch)`` and ``batch``; synflow needs ``apply_fn`` and
    ``input_shape`` (iterative, ``rounds``); random needs ``key``. ``allocation`` is ``'global'``
    (one threshold, the default of all three papers) or ``'uniform'``/``'erk'``/``'er'``.

    >>> p = {'w': jnp.array([[1.0, -3.0], [0.5, 2.0]])}
    >>> pai_masks('magnitude', None, None, p, None, None, 0.5, include='w')['w'].tolist()
    [[False, True], [False, True]]
    """
    if method not in PAI_METHODS:
        raise PruningError(f"pai_masks: unknown method {method!r}; known: {list(PAI_METHODS)}")
    check_sparsity_value(sparsity, "sparsity")
    _check_allocation(allocation)
    if method in ("snip", "grasp"):
        if batch is None:
            raise PruningError(f"pai_masks: method {method!r} needs a batch of data (batch=None)")
        if loss_fn is None:
            raise PruningError(f"pai_masks: method {method!r} needs loss_fn(params, batch)")
        scores = _maybe_jit(snip_scores if method == "snip" else grasp_scores, loss_fn)(params, batch)
    elif method == "synflow":
        if apply_fn is None or input_shape is None:
            raise PruningError("pai_masks: method 'synflow' needs apply_fn(params, x) and input_shape")
        return synflow_masks(apply_fn, params, input_shape, sparsity, rounds=rounds, include=include,
                             allocation=allocation)
    elif method == "random":
        if key is None:
            raise PruningError("pai_masks: method 'random' needs a PRNG key: pass key=")
        scores = random_scores(key, params)
    else:
        scores = magnitude_scores(params)
    return _select(params, scores, sparsity, allocation, include)
