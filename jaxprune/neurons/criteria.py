"""Unit (neuron / channel) importance criteria: higher score = more important = kept.

Activation criteria take ``{layer: UnitStats}`` from :func:`collect_activation_stats`; weight criteria
take the params tree. All return ``{layer: (units,) float32}``; :func:`unit_scores_to_tree` turns that
into a scores tree for ``topk_masks(..., structure=Neurons(axis=-1, outputs=...))``. Every function is pure and
jit-able. Dead (all-zero) and constant units get the lowest activation score, never NaN. See
``docs/neurons.md`` for formulas, directions and references.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from jaxprune.errors import PruningError
from jaxprune.neurons.stats import UnitStats, UnitSummary, finalize_unit_stats
from jaxprune.neurons.tree import kernel_leaves, path_names

UnitScores = dict[str, jax.Array]


def _check_stats(stats: Any, fn: str) -> Mapping[str, UnitStats]:
    if not isinstance(stats, Mapping) or not stats or not all(
            isinstance(s, UnitStats) for s in stats.values()):
        raise PruningError(f"{fn}: stats must be a non-empty mapping layer -> UnitStats from "
                           f"collect_activation_stats (a model whose hidden layers sow activations); "
                           f"got {type(stats).__name__}")
    return stats


def _summaries(stats: Any, fn: str) -> dict[str, UnitSummary]:
    return {k: _finalize_jit(s) for k, s in _check_stats(stats, fn).items()}


_finalize_jit = jax.jit(finalize_unit_stats)  # eager callers: one compile, not op-by-op


def _direction(prune: str, allowed: tuple[str, ...] = ("low", "high")) -> str:
    if prune not in allowed:
        raise PruningError(f"prune must be one of {allowed}, got {prune!r}")
    return prune


def entropy(stats: Mapping[str, UnitStats], *, prune: str = "low") -> UnitScores:
    """Shannon entropy H = −Σ pᵢ log pᵢ (nats) of each unit's activation histogram.

    Luo & Wu 2017, "An Entropy-based Pruning Method for CNN Compression": low-entropy channels carry
    little information and are pruned (``prune='low'``, score H). ``prune='high'`` scores −H; constant
    units (H = 0) stay lowest under both readings (score −log(bins) − 1 there).

    Example:
        >>> from jaxprune.neurons import unit_stats_from_array
        >>> x = jnp.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0]])
        >>> [round(float(v), 3) for v in entropy({'d': unit_stats_from_array(x, bins=4)})['d']]
        [1.386, 0.0]
    """
    prune = _direction(prune)
    out = {}
    for k, s in _summaries(stats, "entropy").items():
        p = s.probs
        # p·log(1/p) >= 0 termwise: no −0.0 for a one-bin (constant) unit.
        h = jnp.sum(jnp.where(p > 0, p * jnp.log(1.0 / jnp.where(p > 0, p, 1.0)), 0.0), axis=1)
        if prune == "high":
            floor = -math.log(p.shape[1]) - 1.0
            h = jnp.where(s.constant, floor, -h)
        out[k] = h
    return out


def apoz(stats: Mapping[str, UnitStats]) -> UnitScores:
    """1 − APoZ: Hu et al. 2016, "Network Trimming": the Average Percentage of Zeros of a unit's
    post-ReLU output (over examples and, for convs, spatial positions); high APoZ is pruned.

    Example:
        >>> from jaxprune.neurons import unit_stats_from_array
        >>> x = jnp.array([[0.0, 1.0], [0.0, 0.0], [2.0, 1.0], [0.0, 3.0]])
        >>> apoz({'d': unit_stats_from_array(x)})['d'].tolist()
        [0.25, 0.75]
    """
    stats = _check_stats(stats, "apoz")
    # Integer nonzero count / elements: a dead unit scores exactly 0 (1 − zeros/elements may fuse
    # into an FMA and come out as −2e-8).
    return {k: (s.elements - s.zeros).astype(jnp.float32)
            / jnp.maximum(s.elements, 1).astype(jnp.float32) for k, s in stats.items()}


def l1_l2_ratio(stats: Mapping[str, UnitStats], *, normalized: bool = True) -> UnitScores:
    """R = ‖x‖₁/‖x‖₂ of each unit over the n calibration values (or R/√n ∈ (0, 1]); 0 if all-zero.

    A diagnostic, not a score: R/√n = 1 for a constant unit and 1/√n for a unit firing once.

    Example:
        >>> from jaxprune.neurons import unit_stats_from_array
        >>> x = jnp.array([[2.0, 1.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])
        >>> l1_l2_ratio({'d': unit_stats_from_array(x)})['d'].tolist()
        [1.0, 0.5]
    """
    out = {}
    for k, s in _summaries(stats, "l1_l2_ratio").items():
        r = jnp.where(s.l2 > 0, s.l1 / jnp.where(s.l2 > 0, s.l2, 1.0), 0.0)
        r = jnp.where(s.constant & (s.l2 > 0), jnp.sqrt(s.count), r)  # exact √n for constants
        out[k] = r / jnp.sqrt(jnp.maximum(s.count, 1.0)) if normalized else r
    return out


def hoyer(stats: Mapping[str, UnitStats], *, prune: str = "high") -> UnitScores:
    """Hoyer sparseness h = (√n − ‖x‖₁/‖x‖₂)/(√n − 1) ∈ [0, 1] of a unit's n activations.

    Hoyer 2004, "Non-negative Matrix Factorization with Sparseness Constraints". A very sparse unit
    fires rarely, so by default high h is pruned (score 1 − h); ``prune='low'`` scores h. An all-zero
    unit has h = 1 (lowest score by default); n = 1 gives h = 0.

    Example:
        >>> from jaxprune.neurons import unit_stats_from_array
        >>> x = jnp.array([[1.0, 3.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
        >>> [round(float(v), 3) for v in hoyer({'d': unit_stats_from_array(x)})['d']]
        [1.0, 0.0]
    """
    prune = _direction(prune)
    ratio = l1_l2_ratio(stats, normalized=False)
    out = {}
    for k, s in _summaries(stats, "hoyer").items():
        root = jnp.sqrt(s.count)
        h = jnp.where(root > 1, (root - ratio[k]) / jnp.where(root > 1, root - 1.0, 1.0), 0.0)
        h = jnp.where(s.l2 > 0, jnp.clip(h, 0.0, 1.0), 1.0)
        out[k] = 1.0 - h if prune == "high" else h
    return out


def stability(stats: Mapping[str, UnitStats]) -> UnitScores:
    """1 − R/√n with R = ‖x‖₁/‖x‖₂: how much a unit's output varies relative to its size.

    R/√n is 1 for a constant unit, the least informative kind (it can be folded into the next
    layer's bias), so 1 − R/√n ranks constant and all-zero units lowest (exactly 0). For ReLU
    outputs R/√n = 1/√(1 + CV²) (CV = std/mean), so this is a monotone coefficient-of-variation score.

    Example:
        >>> from jaxprune.neurons import unit_stats_from_array
        >>> x = jnp.array([[2.0, 1.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])
        >>> stability({'d': unit_stats_from_array(x)})['d'].tolist()
        [0.0, 0.5]
    """
    r = l1_l2_ratio(stats, normalized=True)
    return {k: jnp.where(s.constant, 0.0, jnp.clip(1.0 - r[k], 0.0, 1.0))
            for k, s in _summaries(stats, "stability").items()}


def variance(stats: Mapping[str, UnitStats]) -> UnitScores:
    """Population variance of a unit's activations; a (near-)constant unit is pruned first.

    Example:
        >>> from jaxprune.neurons import unit_stats_from_array
        >>> variance({'d': unit_stats_from_array(jnp.array([[1.0, 5.0], [3.0, 5.0]]))})['d'].tolist()
        [1.0, 0.0]
    """
    return {k: s.variance for k, s in _summaries(stats, "variance").items()}


def weight_norm(params: Any, ord: int = 2, *, layers: Iterable[str] | None = None) -> UnitScores:
    """L1 (``ord=1``) or L2 norm of each unit's incoming kernel weights (Li et al. 2017 use L1).

    Scores every layer with a ``kernel`` leaf (unit axis last) unless ``layers`` names a subset —
    pass ``hidden_layers(...)`` or the stats' keys to leave the output layer out.

    Example:
        >>> p = {'params': {'Dense_0': {'kernel': jnp.array([[3.0, 1.0], [-4.0, 0.0]])}}}
        >>> weight_norm(p, ord=2)['Dense_0'].tolist(), weight_norm(p, ord=1)['Dense_0'].tolist()
        ([5.0, 1.0], [7.0, 1.0])
    """
    if ord not in (1, 2):
        raise PruningError(f"weight_norm: ord must be 1 or 2, got {ord!r}")
    kernels = _kernels(params, layers, "weight_norm")
    out = {}
    for k, w in kernels.items():
        axes = tuple(range(w.ndim - 1))
        w = w.astype(jnp.float32)
        out[k] = jnp.sum(jnp.abs(w), axis=axes) if ord == 1 else jnp.sqrt(jnp.sum(w * w, axis=axes))
    return out


def taylor(params: Any, grads: Any, *, layers: Iterable[str] | None = None) -> UnitScores:
    """First-order Taylor importance of a unit: (Σ_{s ∈ unit} w_s·g_s)² over its kernel column and bias.

    Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning", eq. (group
    contribution). ``grads`` is a gradient tree shaped like ``params``; for the paper's running
    average over minibatches, average this score over per-batch gradients.

    Example:
        >>> p = {'Dense_0': {'kernel': jnp.array([[1.0, 2.0]]), 'bias': jnp.array([1.0, 0.0])}}
        >>> g = {'Dense_0': {'kernel': jnp.array([[1.0, 1.0]]), 'bias': jnp.array([2.0, 5.0])}}
        >>> taylor(p, g)['Dense_0'].tolist()
        [9.0, 4.0]
    """
    units = {k: w.shape[-1] for k, w in _kernels(params, layers, "taylor").items()}
    flat_p, tree_p = jax.tree_util.tree_flatten_with_path(params)
    flat_g, tree_g = jax.tree_util.tree_flatten(grads)
    if tree_p != tree_g:
        raise PruningError(f"taylor: grads must have the params' tree structure; params {tree_p}, "
                           f"grads {tree_g}")
    out: UnitScores = {}
    for (path, w), g in zip(flat_p, flat_g):
        layer = "/".join(path_names(path)[:-1])
        if layer in units and jnp.ndim(w) >= 1 and jnp.shape(w)[-1] == units[layer]:
            wg = jnp.asarray(w, jnp.float32) * jnp.asarray(g, jnp.float32)
            part = jnp.sum(wg, axis=tuple(range(wg.ndim - 1)))
            out[layer] = out.get(layer, 0.0) + part
    return {k: jnp.square(v) for k, v in out.items()}


def _kernels(params: Any, layers: Iterable[str] | None, fn: str) -> dict[str, jax.Array]:
    kernels = kernel_leaves(params, None if layers is None else tuple(layers))
    if not kernels:
        raise PruningError(f"{fn}: no 'kernel' leaves (ndim >= 2) found in params"
                           + ("" if layers is None else f" for layers {sorted(layers)}"))
    if layers is not None and set(layers) - set(kernels):
        raise PruningError(f"{fn}: layers {sorted(set(layers) - set(kernels))} have no 'kernel' leaf")
    return kernels


class NeuronCriterion(NamedTuple):
    """A registry entry: the function, which inputs it reads, and fixed options."""

    fn: Callable[..., UnitScores]
    inputs: tuple[str, ...]  # subset of ('stats', 'params', 'grads'), in call order
    options: dict


CRITERIA: dict[str, NeuronCriterion] = {
    "entropy": NeuronCriterion(entropy, ("stats",), {}),
    "apoz": NeuronCriterion(apoz, ("stats",), {}),
    "hoyer": NeuronCriterion(hoyer, ("stats",), {}),
    "stability": NeuronCriterion(stability, ("stats",), {}),
    "variance": NeuronCriterion(variance, ("stats",), {}),
    "l1": NeuronCriterion(weight_norm, ("params",), {"ord": 1}),
    "l2": NeuronCriterion(weight_norm, ("params",), {"ord": 2}),
    "taylor": NeuronCriterion(taylor, ("params", "grads"), {}),
}


def get_criterion(name: str) -> Callable[..., UnitScores]:
    """A criterion with the uniform signature ``(*, stats=None, params=None, grads=None, **options)``.

    Example:
        >>> p = {'params': {'Dense_0': {'kernel': jnp.array([[3.0, 1.0], [-4.0, 0.0]])}}}
        >>> get_criterion('l1')(params=p)['Dense_0'].tolist()
        [7.0, 1.0]
    """
    if name not in CRITERIA:
        raise PruningError(f"get_criterion: unknown criterion {name!r}; known: {sorted(CRITERIA)}")
    entry = CRITERIA[name]

    def criterion(*, stats: Any = None, params: Any = None, grads: Any = None,
                  **options: Any) -> UnitScores:
        given = {"stats": stats, "params": params, "grads": grads}
        missing = [i for i in entry.inputs if given[i] is None]
        if missing:
            raise PruningError(f"criterion {name!r} needs {', '.join(missing)} "
                               f"(inputs: {', '.join(entry.inputs)})")
        return entry.fn(*(given[i] for i in entry.inputs), **{**entry.options, **options})

    criterion.__name__ = name
    criterion.__doc__ = entry.fn.__doc__
    return criterion
