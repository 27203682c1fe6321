"""Sparsity allocation: a target sparsity -> a tree of per-leaf sparsities (0.0 where not pruned).

* :func:`uniform_sparsity` — every selected leaf at the target.
* :func:`er_sparsity` / :func:`erk_sparsity` — Erdős–Rényi(-Kernel) from SET / RigL (Mocanu et al.
  2018; Evci et al. 2020): density of a layer ∝ ε·(Σ dims)/(∏ dims) (ER uses only the last two dims,
  fan-in and fan-out; ERK all dims). ε is solved for the budget; a layer whose density would exceed 1
  becomes dense and ε is solved again over the rest.

ER/ERK hit the total budget exactly: the selected leaves lose exactly ``round_half_even(s · N)``
elements in total (per-leaf zero counts are integers distributed by largest remainder, and each
leaf's sparsity is ``zeros / size``). ``overrides`` fix chosen leaves (``{'*/Dense_0/*': 0.0}``); the
rest of the budget is spread over the other selected leaves. With a concrete target the arithmetic is
float64 on the host and the result holds Python floats; with a traced target it is the same code in
float32 on the device, returning arrays (no recompile when the target changes).
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.counts import check_sparsity_value, is_concrete, num_pruned
from jaxprune.errors import PruningError
from jaxprune.paths import Selector, leaf_paths, path_str, selected_paths

__all__ = ["uniform_sparsity", "er_sparsity", "erk_sparsity", "achieved_sparsity", "check_budget"]


def _plan(params: Any, sparsity: Any, include: Selector, exclude: Selector,
          overrides: Optional[Mapping[str, float]]):
    check_sparsity_value(sparsity, "sparsity")
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [path_str(p) for p, _ in flat]
    shapes = [tuple(np.shape(x)) for _, x in flat]
    chosen = set(selected_paths(params, include, exclude))
    fixed: dict[str, Any] = {}
    for pattern, value in (overrides or {}).items():
        check_sparsity_value(value, f"overrides[{pattern!r}]")
        hits = [p for p in paths if fnmatch.fnmatchcase(p, pattern)]
        if not hits:
            raise PruningError(f"overrides: pattern {pattern!r} matches no leaf; leaves are {paths}")
        for p in hits:
            fixed[p] = value
    return flat, treedef, paths, shapes, chosen, fixed


def uniform_sparsity(
    params: Any,
    sparsity: Any,
    *,
    include: Selector = None,
    exclude: Selector = (),
    overrides: Optional[Mapping[str, float]] = None,
) -> Any:
    """Every selected leaf at ``sparsity``; unselected leaves 0.0; ``overrides`` win by glob.

    >>> uniform_sparsity({'w': np.zeros((4, 4)), 'b': np.zeros(4)}, 0.5)
    {'b': 0.0, 'w': 0.5}
    """
    flat, treedef, paths, _, chosen, fixed = _plan(params, sparsity, include, exclude, overrides)
    out = [fixed.get(p, sparsity if p in chosen else 0.0) for p in paths]
    return jax.tree.unflatten(treedef, out)


def _raw_density(shape: tuple[int, ...], kernel_dims: bool) -> float:
    dims = shape if kernel_dims else shape[-2:]
    dims = dims or (1,)
    return float(sum(dims)) / float(math.prod(dims))


def _erdos_renyi(params, sparsity, include, exclude, overrides, kernel_dims: bool) -> Any:
    flat, treedef, paths, shapes, chosen, fixed = _plan(params, sparsity, include, exclude, overrides)
    free = [i for i, p in enumerate(paths) if p in chosen and p not in fixed]
    n_all = sum(math.prod(shapes[i]) for i, p in enumerate(paths) if p in chosen)
    fixed_zeros = [num_pruned(fixed[p], math.prod(shapes[i])) for i, p in enumerate(paths)
                   if p in fixed and p in chosen]
    target = num_pruned(sparsity, n_all) - sum(fixed_zeros)
    concrete = is_concrete(sparsity) and all(is_concrete(v) for v in fixed.values())
    xp, dt = (np, np.float64) if concrete else (jnp, jnp.float32)
    sizes = xp.asarray([math.prod(shapes[i]) for i in free], dt)
    n_free = int(sum(math.prod(shapes[i]) for i in free))
    if concrete and not 0 <= target <= n_free:
        raise PruningError(
            f"overrides {dict(overrides or {})} leave {target} of {n_free} free elements to prune "
            f"for a total sparsity of {sparsity}: the budget cannot be met"
        )
    if not free:
        zeros = xp.zeros((0,), dt)
    else:
        raw = xp.asarray([_raw_density(shapes[i], kernel_dims) for i in free], dt)
        keep = n_free - xp.asarray(target, dt)
        dense = xp.zeros(len(free), bool)
        # Each pass makes dense at least one more layer or changes nothing: len(free) passes suffice.
        for _ in range(len(free)):
            budget = keep - xp.sum(xp.where(dense, sizes, 0))
            denom = xp.sum(xp.where(dense, 0, raw * sizes))
            eps = budget / xp.where(denom > 0, denom, 1)
            dense = dense | (eps * raw >= 1)
        density = xp.where(dense, 1.0, xp.clip(eps * raw, 0.0, 1.0))
        zeros = (1.0 - density) * sizes
    # Integer zero counts by largest remainder, so the total is exactly `target`.
    base = xp.clip(xp.floor(zeros), 0, sizes)
    short = xp.asarray(target, dt) - xp.sum(base)
    rank = _stable_argsort(xp, _stable_argsort(xp, -(zeros - base)))  # inverse permutation
    counts = base + (rank < short)
    ratios = counts / xp.where(sizes > 0, sizes, 1)
    out: list[Any] = [0.0] * len(paths)
    for j, i in enumerate(free):
        out[i] = float(ratios[j]) if concrete else ratios[j]
    for i, p in enumerate(paths):
        if p in fixed and p in chosen:
            out[i] = fixed[p]
    return jax.tree.unflatten(treedef, out)


def _stable_argsort(xp: Any, x: Any) -> Any:
    return np.argsort(x, kind="stable") if xp is np else jnp.argsort(x, stable=True)


def er_sparsity(params: Any, sparsity: Any, *, include: Selector = None, exclude: Selector = (),
                overrides: Optional[Mapping[str, float]] = None) -> Any:
    """Erdős–Rényi allocation (SET, Mocanu et al. 2018): density ∝ (fan_in + fan_out)/(fan_in·fan_out).

    >>> s = er_sparsity({'a': np.zeros((10, 10)), 'b': np.zeros((100, 10))}, 0.5)
    >>> s['a'] < s['b']
    True
    """
    return _erdos_renyi(params, sparsity, include, exclude, overrides, kernel_dims=False)


def erk_sparsity(params: Any, sparsity: Any, *, include: Selector = None, exclude: Selector = (),
                 overrides: Optional[Mapping[str, float]] = None) -> Any:
    """Erdős–Rényi-Kernel allocation (RigL, Evci et al. 2020): density ∝ Σ dims / ∏ dims.

    Layers whose density would exceed 1 are made dense and ε is solved again; the total number of
    zeros over the selected leaves is exactly ``round_half_even(sparsity · N)``.

    >>> s = erk_sparsity({'c': np.zeros((3, 3, 8, 16)), 'd': np.zeros((256, 10))}, 0.9)
    >>> round(s['c'] * 1152 + s['d'] * 2560)
    3341
    """
    return _erdos_renyi(params, sparsity, include, exclude, overrides, kernel_dims=True)


def achieved_sparsity(params: Any, sparsities: Any, *, include: Selector = None,
                      exclude: Selector = ()) -> float:
    """Total sparsity that ``sparsities`` produce over the selected leaves (by the rounding rule).

    >>> achieved_sparsity({'w': np.zeros((10, 10))}, {'w': 0.25})
    0.25
    """
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    svals = jax.tree.leaves(sparsities)
    chosen = set(selected_paths(params, include, exclude))
    zeros = total = 0
    for (p, x), s in zip(flat, svals):
        if path_str(p) in chosen:
            zeros += int(num_pruned(s, int(np.size(x))))
            total += int(np.size(x))
    return zeros / total


def check_budget(params: Any, sparsities: Any, target: float, *, include: Selector = None,
                 exclude: Selector = (), exact: bool = True) -> None:
    """Raises :class:`PruningError` if ``sparsities`` miss the ``target`` total over selected leaves.

    ``exact=True`` demands exactly ``round(target · N)`` zeros (what ER/ERK guarantee); ``exact=False``
    allows the half-element-per-leaf rounding slack of per-leaf rules such as uniform.

    >>> p = {'a': np.zeros((10, 10)), 'b': np.zeros((30, 10))}
    >>> check_budget(p, erk_sparsity(p, 0.8), 0.8)
    """
    check_sparsity_value(target, "target")
    chosen = selected_paths(params, include, exclude)
    n = sum(int(np.size(x)) for p, x in zip(leaf_paths(params), jax.tree.leaves(params)) if p in chosen)
    got = round(achieved_sparsity(params, sparsities, include=include, exclude=exclude) * n)
    want = num_pruned(target, n)
    slack = 0 if exact else (len(chosen) + 1) // 2
    if abs(got - want) > slack:
        raise PruningError(
            f"sparsity budget missed: {got} zeros over {n} selected elements, target {target} needs "
            f"{want} (allowed slack {slack})"
        )
