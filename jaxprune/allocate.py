"""Sparsity allocation: a target sparsity -> a tree of per-leaf sparsities (0.0 where not pruned).

* :func:`uniform_sparsity` — every selected leaf at the target.
* :func:`er_sparsity` / :func:`erk_sparsity` — Erdős–Rényi(-Kernel) from SET / RigL (Mocanu et al.
  2018; Evci et al. 2020): density of a layer ∝ ε·(Σ dims)/(∏ dims) (ER uses only the last two dims,
  fan-in and fan-out; ERK all dims). ε is solved for the budget; a layer whose density would exceed 1
  becomes dense and ε is solved again over the rest.

Leaves are selected by ``include``/``exclude`` (:mod:`jaxprune.paths`: by default the ``kernel``
leaves; a pattern naming a layer selects its kernels). Unselected leaves, and selected leaves with no
elements, get ``0.0``.

ER/ERK hit the total budget exactly: the selected leaves lose exactly ``round_half_even(s · N)``
elements in total (per-leaf zero counts are integers distributed by largest remainder, and each
leaf's sparsity is ``zeros / size``). ``overrides`` fix chosen leaves (``{'*/Dense_0': 0.0}``): each
pattern covers the selected leaves whose path, or a layer above them, it matches — it never adds a
leaf to the selection, and a pattern that covers no selected leaf is an error naming it; where two
patterns cover a leaf the later one wins. The rest of the budget is spread over the other selected
leaves. With a concrete target the arithmetic is float64 on the host and the result holds Python
floats; with a traced target it is the same code in float32 on the device, returning arrays (no
recompile when the target changes).

**Budgets the overrides make impossible.** Eagerly, a target that the fixed leaves alone overshoot
(or that needs more zeros than the free leaves hold) raises. Under ``jit`` nothing can raise, so the
free leaves' zero count is clipped to what they can take: the overrides are kept as given and the free
leaves go fully dense (or fully pruned) — the nearest feasible allocation, the same on every call.
:func:`achieved_sparsity` (which also works on traced trees) gives the total actually reached.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.counts import check_sparsity_value, is_concrete, num_pruned
from jaxprune.errors import PruningError
from jaxprune.paths import Selector, check_same_structure, covers, flatten_with_paths, selected_paths

__all__ = ["uniform_sparsity", "er_sparsity", "erk_sparsity", "achieved_sparsity", "check_budget"]


def _fixed(overrides: Optional[Mapping[Any, Any]], paths: list[str], chosen: set[str]) -> dict:
    """``{path: sparsity}`` from the override patterns; later patterns win."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise PruningError(f"overrides: expected a mapping {{glob: sparsity}}, got "
                           f"{type(overrides).__name__}")
    fixed: dict[str, Any] = {}
    for pattern, value in overrides.items():
        if not isinstance(pattern, (str, re.Pattern)):
            raise PruningError(f"overrides: key {pattern!r} must be a glob string or a compiled regex")
        check_sparsity_value(value, f"overrides[{pattern!r}]")
        hits = [p for p in paths if covers(pattern, p)]
        if not hits:
            raise PruningError(f"overrides: pattern {pattern!r} matches no leaf; leaves are {paths}")
        mine = [p for p in hits if p in chosen]
        if not mine:
            raise PruningError(
                f"overrides: pattern {pattern!r} covers only {hits[:6]}, which include/exclude leave "
                f"dense; an override sets the sparsity of selected leaves (selected: "
                f"{sorted(chosen)[:6]}), so name these leaves in include to prune them")
        for p in mine:
            fixed[p] = value
    return fixed


def _plan(params: Any, sparsity: Any, include: Selector, exclude: Selector,
          overrides: Optional[Mapping[str, float]]):
    check_sparsity_value(sparsity, "sparsity")
    flat, treedef = flatten_with_paths(params)
    paths = [p for p, _ in flat]
    shapes = [tuple(np.shape(x)) for _, x in flat]
    chosen = set(selected_paths(params, include, exclude))
    fixed = _fixed(overrides, paths, chosen)
    # A leaf with no elements has nothing to prune (and no ER/ERK density): it gets 0.0.
    empty = {p for p, shape in zip(paths, shapes) if math.prod(shape) == 0}
    chosen -= empty
    fixed = {p: v for p, v in fixed.items() if p not in empty}
    return treedef, paths, shapes, chosen, fixed


def uniform_sparsity(
    params: Any,
    sparsity: Any,
    *,
    include: Selector = None,
    exclude: Selector = (),
    overrides: Optional[Mapping[str, float]] = None,
) -> Any:
    """Every selected leaf at ``sparsity``; unselected leaves 0.0; ``overrides`` win by glob.

    >>> uniform_sparsity({'d': {'kernel': np.zeros((4, 4)), 'bias': np.zeros(4)}}, 0.5)
    {'d': {'bias': 0.0, 'kernel': 0.5}}
    """
    treedef, paths, _, chosen, fixed = _plan(params, sparsity, include, exclude, overrides)
    out = [fixed.get(p, sparsity if p in chosen else 0.0) for p in paths]
    return jax.tree.unflatten(treedef, out)


def _raw_density(shape: tuple[int, ...], kernel_dims: bool) -> float:
    dims = shape if kernel_dims else shape[-2:]
    dims = dims or (1,)
    return float(sum(dims)) / float(math.prod(dims))


def _erdos_renyi(params, sparsity, include, exclude, overrides, kernel_dims: bool) -> Any:
    treedef, paths, shapes, chosen, fixed = _plan(params, sparsity, include, exclude, overrides)
    free = [i for i, p in enumerate(paths) if p in chosen and p not in fixed]
    n_all = sum(math.prod(shapes[i]) for i, p in enumerate(paths) if p in chosen)
    fixed_zeros = [num_pruned(fixed[p], math.prod(shapes[i])) for i, p in enumerate(paths)
                   if p in fixed]
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
    if not concrete:
        # Under jit the check above cannot raise: clip to the nearest feasible count (see the module
        # docstring), so an impossible budget gives the same documented answer every time.
        target = jnp.clip(target, 0, n_free)
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
    counts = xp.minimum(base + (rank.astype(base.dtype) < short).astype(base.dtype), sizes)
    ratios = counts / xp.where(sizes > 0, sizes, 1)
    out: list[Any] = [0.0] * len(paths)
    for j, i in enumerate(free):
        out[i] = float(ratios[j]) if concrete else ratios[j]
    for i, p in enumerate(paths):
        if p in fixed:
            out[i] = fixed[p]
    return jax.tree.unflatten(treedef, out)


def _stable_argsort(xp: Any, x: Any) -> Any:
    return np.argsort(x, kind="stable") if xp is np else jnp.argsort(x, stable=True)


def er_sparsity(params: Any, sparsity: Any, *, include: Selector = None, exclude: Selector = (),
                overrides: Optional[Mapping[str, float]] = None) -> Any:
    """Erdős–Rényi allocation (SET, Mocanu et al. 2018): density ∝ (fan_in + fan_out)/(fan_in·fan_out).

    >>> p = {'a': {'kernel': np.zeros((10, 10))}, 'b': {'kernel': np.zeros((100, 10))}}
    >>> s = er_sparsity(p, 0.5)
    >>> s['a']['kernel'] < s['b']['kernel']
    True
    """
    return _erdos_renyi(params, sparsity, include, exclude, overrides, kernel_dims=False)


def erk_sparsity(params: Any, sparsity: Any, *, include: Selector = None, exclude: Selector = (),
                 overrides: Optional[Mapping[str, float]] = None) -> Any:
    """Erdős–Rényi-Kernel allocation (RigL, Evci et al. 2020): density ∝ Σ dims / ∏ dims.

    Layers whose density would exceed 1 are made dense and ε is solved again; the total number of
    zeros over the selected leaves is exactly ``round_half_even(sparsity · N)``.

    >>> s = erk_sparsity({'c': np.zeros((3, 3, 8, 16)), 'd': np.zeros((256, 10))}, 0.9,
    ...                  include=['c', 'd'])
    >>> round(s['c'] * 1152 + s['d'] * 2560)
    3341
    """
    return _erdos_renyi(params, sparsity, include, exclude, overrides, kernel_dims=True)


def _zero_count(params: Any, sparsities: Any, chosen: list[str]) -> tuple[Any, int]:
    """(zeros, elements) over the chosen leaves; zeros is an int32 array if any sparsity is traced."""
    check_same_structure(params, sparsities, "sparsities", shapes=False)
    flat, _ = flatten_with_paths(params)
    s_flat, _ = flatten_with_paths(sparsities)
    keep = set(chosen)
    zeros: Any = 0
    total = 0
    for (p, x), (_, s) in zip(flat, s_flat):
        if np.ndim(s) != 0:
            raise PruningError(f"sparsities leaf '{p}' must be a scalar, got shape {np.shape(s)}")
        if p in keep:
            zeros = zeros + num_pruned(s, int(np.size(x)))
            total += int(np.size(x))
    return zeros, total


def achieved_sparsity(params: Any, sparsities: Any, *, include: Selector = None,
                      exclude: Selector = ()) -> Any:
    """Total sparsity that ``sparsities`` produce over the selected leaves (by the rounding rule).

    ``sparsities`` must have the structure of ``params``. A Python float for concrete sparsities; a
    float32 array when some are traced (inside ``jit``), e.g. to see what a clipped budget reached.

    >>> achieved_sparsity({'d': {'kernel': np.zeros((10, 10))}}, {'d': {'kernel': 0.25}})
    0.25
    """
    zeros, total = _zero_count(params, sparsities, selected_paths(params, include, exclude))
    if not is_concrete(zeros):
        return zeros.astype(jnp.float32) / max(total, 1)
    return zeros / total if total else 0.0


def check_budget(params: Any, sparsities: Any, target: float, *, include: Selector = None,
                 exclude: Selector = (), exact: bool = True) -> None:
    """Raises :class:`PruningError` if ``sparsities`` miss the ``target`` total over selected leaves.

    ``exact=True`` demands exactly ``round(target · N)`` zeros (what ER/ERK guarantee); ``exact=False``
    allows the half-element-per-leaf rounding slack of per-leaf rules such as uniform. ``sparsities``
    must have the structure of ``params`` and be concrete (a check cannot raise inside ``jit``).

    >>> p = {'a': {'kernel': np.zeros((10, 10))}, 'b': {'kernel': np.zeros((30, 10))}}
    >>> check_budget(p, erk_sparsity(p, 0.8), 0.8)
    """
    check_sparsity_value(target, "target")
    if not is_concrete(target):
        raise PruningError("check_budget: target is traced; call it outside jit")
    chosen = selected_paths(params, include, exclude)
    got, n = _zero_count(params, sparsities, chosen)
    if not is_concrete(got):
        raise PruningError("check_budget: sparsities are traced; call it outside jit")
    want = num_pruned(target, n)
    slack = 0 if exact else (len(chosen) + 1) // 2
    if abs(got - want) > slack:
        raise PruningError(
            f"sparsity budget missed: {got} zeros over {n} selected elements, target {target} needs "
            f"{want} (allowed slack {slack})"
        )
