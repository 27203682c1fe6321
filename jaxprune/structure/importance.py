"""Group importance and unit selection over a traced :class:`~jaxprune.structure.graph.Graph`.

A group's unit ``u`` occupies a slice of every member leaf axis (``Member.unit_indices``); its score
is the sum of its slices' contributions over all members (higher = more important = kept):

* ``'l1'``: ``sum |w|``; ``'l2'``: ``sqrt(sum w**2)`` over every element of the unit's slices;
* ``'taylor'``: ``sum |w * dL/dw|`` (first-order Taylor estimate of the loss change when the unit
  goes; Molchanov et al., CVPR 2019), from ``grads`` of the same structure as ``params``;
* ``'random'``: uniform from ``key``;
* activation criteria (``'entropy'``, ``'apoz'``, ``'hoyer'``, ``'stability'``, ``'variance'``,
  :data:`jaxprune.neurons.CRITERIA`): per-feature scores of the producers' outputs, captured from the
  unmodified model by :func:`jaxprune.neurons.collect_activation_stats`, summed over the unit's
  indices (:func:`activation_group_scores`).

Only the members accepted by ``include`` (a predicate on the leaf path; default: every member) count,
so BatchNorm running statistics need not weigh in a magnitude.

Selection (:func:`select_units`) keeps the kit's rounding rule (:func:`jaxprune.counts.num_pruned`):
layerwise, every prunable group of ``n`` units loses ``round_half_even(s * n)`` of them, never more
than ``n - min_keep``; globally, scores are divided by their group's mean and the lowest
``round_half_even(s * N)`` of all ``N`` units go (still never emptying a group). ``round_to=k`` then
rounds each pruned group's kept count to the nearest multiple of ``k`` (at least ``k``); a group
smaller than ``k`` is left whole. Ties go by unit index (lower index removed first).

>>> import jax.numpy as jnp
>>> from jaxprune.structure.graph import trace
>>> p = {'w1': jnp.arange(12.0).reshape(3, 4), 'w2': jnp.ones((4, 2))}
>>> g = trace(lambda p, x: jnp.tanh(x @ p['w1']) @ p['w2'], p, jnp.ones((1, 3)))
>>> s = group_scores(g, p, 'l1')
>>> keep = select_units(g, s, 0.5)
>>> [k.tolist() for k in keep.values()]
[[False, False, True, True]]
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from jaxprune.counts import check_sparsity_value, num_pruned
from jaxprune.errors import PruningError
from jaxprune.paths import covers, flatten_with_paths
from jaxprune.structure.graph import Graph, Group, Member

__all__ = ["WEIGHT_CRITERIA", "unit_index_matrix", "group_scores", "activation_group_scores",
           "producer_layers", "ignored_groups", "select_units"]

WEIGHT_CRITERIA = ("l1", "l2", "taylor", "random")
"""Importance names computed from the params (and grads / a key) alone."""


def unit_index_matrix(member: Member, size: int) -> np.ndarray:
    """``(size, repeat*count)`` indices along ``member.axis``: row ``u`` is unit ``u``'s slice.

    >>> unit_index_matrix(Member('qkv', 1, stride=4, count=4), 2)
    array([[0, 1, 2, 3],
           [4, 5, 6, 7]])
    """
    u = np.arange(size).reshape(-1, 1, 1) * member.stride
    r = np.arange(member.repeat).reshape(1, -1, 1) * member.period
    c = np.arange(member.count).reshape(1, 1, -1)
    return (member.offset + u + r + c).reshape(size, -1)


def _per_index(leaf: Any, axis: int, fn: Callable) -> np.ndarray:
    x = np.asarray(leaf, np.float64)
    return fn(np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)).sum(axis=1)


def group_scores(graph: Graph, params: Any, importance: str = "l2", *, grads: Any = None,
                 key: Optional[jax.Array] = None,
                 include: Optional[Callable[[str], bool]] = None) -> dict[int, np.ndarray]:
    """``{group id: (size,) float64}`` for every prunable group (higher = kept).

    >>> import jax.numpy as jnp
    >>> from jaxprune.structure.graph import trace
    >>> p = {'a': jnp.array([[3.0, 0.0, 1.0]]), 'b': jnp.array([[1.0], [1.0], [0.0]])}
    >>> g = trace(lambda p, x: jnp.tanh(x @ p['a']) @ p['b'], p, jnp.ones((2, 1)))
    >>> group_scores(g, p, 'l1')[g.group_of('a', 1).id].tolist()
    [4.0, 1.0, 1.0]
    """
    if importance not in WEIGHT_CRITERIA:
        raise PruningError(f"group_scores: importance must be one of {WEIGHT_CRITERIA} (activation "
                           f"criteria: activation_group_scores), got {importance!r}")
    groups = [g for g in graph.groups if g.prunable]
    if importance == "random":
        if key is None:
            raise PruningError("group_scores: importance='random' needs key=")
        return {g.id: np.asarray(jax.random.uniform(jax.random.fold_in(key, g.id), (g.size,)),
                                 np.float64) for g in groups}
    leaves = dict(flatten_with_paths(params)[0])
    if importance == "taylor":
        if grads is None:
            raise PruningError("group_scores: importance='taylor' needs grads= (same tree as params)")
        grad_leaves = dict(flatten_with_paths(grads)[0])
        if set(grad_leaves) != set(leaves):
            raise PruningError("group_scores: grads do not have the params' structure")
    out = {}
    for g in groups:
        total = np.zeros(g.size)
        for m in g.members:
            if include is not None and not include(m.path):
                continue
            if m.path not in leaves:
                raise PruningError(f"group_scores: group {g.id} names leaf '{m.path}', which params lack")
            if importance == "taylor":
                x = np.asarray(leaves[m.path], np.float64) * np.asarray(grad_leaves[m.path], np.float64)
                vec = _per_index(x, m.axis, np.abs)
            elif importance == "l1":
                vec = _per_index(leaves[m.path], m.axis, np.abs)
            else:
                vec = _per_index(leaves[m.path], m.axis, np.square)
            total += vec[unit_index_matrix(m, g.size)].sum(axis=1)
        out[g.id] = np.sqrt(total) if importance == "l2" else total
    return out


def producer_layers(group: Group) -> tuple[str, ...]:
    """The module paths whose outputs carry ``group``'s units (``'params/'`` and the leaf dropped).

    >>> from jaxprune.structure.graph import Group
    >>> producer_layers(Group(0, 4, 'features', (), True, None, ('params/fc1/kernel',)))
    ('fc1',)
    """
    out = []
    for p in group.producers:
        parts = p.split("/")[:-1]
        if parts[:1] == ["params"]:
            parts = parts[1:]
        out.append("/".join(parts))
    return tuple(dict.fromkeys(out))


def activation_group_scores(graph: Graph, unit_scores: Mapping[str, Any]) -> dict[int, np.ndarray]:
    """Group scores from per-feature scores of layer outputs (``{layer: (features,)}``, e.g. a
    :mod:`jaxprune.neurons` criterion of ``collect_activation_stats(..., layers=[...])``).

    A unit's score is the sum of its producers' feature scores over the unit's indices; this needs the
    producer's units on its kernel's last axis (the output features). Groups where that does not hold
    (attention heads inside a ``(heads, head_dim)`` kernel) raise, naming the group.

    >>> import jax.numpy as jnp
    >>> from jaxprune.structure.graph import trace
    >>> p = {'fc': {'kernel': jnp.ones((2, 3))}, 'out': {'kernel': jnp.ones((3, 1))}}
    >>> g = trace(lambda p, x: jnp.tanh(x @ p['fc']['kernel']) @ p['out']['kernel'], p, jnp.ones((1, 2)))
    >>> hidden = g.group_of('fc/kernel', 1).id
    >>> activation_group_scores(g, {'fc': jnp.array([0.5, 2.0, 1.0])})[hidden].tolist()
    [0.5, 2.0, 1.0]
    """
    out = {}
    for g in graph.groups:
        if not g.prunable:
            continue
        total = np.zeros(g.size)
        for m in g.members:
            if m.path not in g.producers:
                continue
            layer = producer_layers(g._replace(producers=(m.path,)))[0]
            ndim = len(graph.shapes[m.path])
            if m.axis != ndim - 1 or layer not in unit_scores:
                raise PruningError(
                    f"activation scores: group {g.id} ({g.kind}) is produced by '{m.path}' axis {m.axis}"
                    + ("" if m.axis == ndim - 1 else ", not its output-feature (last) axis")
                    + ("" if layer in unit_scores else f", and no scores were captured for '{layer}'")
                    + "; use a weight criterion (l1/l2/taylor) or ignore= the layer")
            vec = np.asarray(unit_scores[layer], np.float64).reshape(-1)
            if vec.shape[0] != graph.shapes[m.path][-1]:
                raise PruningError(f"activation scores: '{layer}' has {vec.shape[0]} features, its kernel "
                                   f"'{m.path}' {graph.shapes[m.path][-1]}")
            total += vec[unit_index_matrix(m, g.size)].sum(axis=1)
        out[g.id] = total
    return out


def ignored_groups(graph: Graph, ignore: Sequence[str]) -> set[int]:
    """Ids of the groups a layer named in ``ignore`` produces (globs on layer paths, ``'params/'``
    optional); a glob that matches no producer is an error.

    >>> import jax.numpy as jnp
    >>> from jaxprune.structure.graph import trace
    >>> p = {'fc': {'kernel': jnp.ones((2, 3))}, 'out': {'kernel': jnp.ones((3, 1))}}
    >>> g = trace(lambda p, x: jnp.tanh(x @ p['fc']['kernel']) @ p['out']['kernel'], p, jnp.ones((1, 2)))
    >>> ignored_groups(g, ['fc']) == {g.group_of('fc/kernel', 1).id}
    True
    """
    if isinstance(ignore, str):
        ignore = (ignore,)
    out: set[int] = set()
    for pattern in ignore:
        hit = {g.id for g in graph.groups
               if any(covers(pattern, p) or covers(pattern, p.split("/", 1)[-1] if p.startswith("params/")
                                                   else p) for p in g.producers)}
        if not hit:
            producers = sorted({p for g in graph.groups for p in g.producers})
            raise PruningError(f"ignore: {pattern!r} matches no layer that produces units; producers: "
                               f"{producers[:8]}{' ...' if len(producers) > 8 else ''}")
        out |= hit
    return out


def _round_kept(kept: int, size: int, round_to: Optional[int]) -> int:
    if not round_to or round_to == 1 or kept == size:
        return kept
    if size < round_to:
        return size
    # Nearest multiple, ties to even multiples like the kit's count rule; never below one multiple.
    return int(min(max(round_to * np.round(kept / round_to), round_to), round_to * (size // round_to)))


def _lowest(scores: np.ndarray, n: int) -> np.ndarray:
    keep = np.ones(scores.shape[0], bool)
    keep[np.argsort(scores, kind="stable")[:n]] = False
    return keep


def select_units(graph: Graph, scores: Mapping[int, Any], sparsity: float, *, global_: bool = False,
                 round_to: Optional[int] = None, min_keep: int = 1,
                 ignore: Sequence[str] = (), skip: Sequence[int] = ()) -> dict[int, np.ndarray]:
    """``{group id: (size,) bool}`` (True = kept) for every prunable group that no ``ignore`` glob
    names and whose id is not in ``skip``.

    >>> import jax.numpy as jnp
    >>> from jaxprune.structure.graph import trace
    >>> p = {'a': jnp.ones((2, 16)), 'b': jnp.ones((16, 1))}
    >>> g = trace(lambda p, x: jnp.tanh(x @ p['a']) @ p['b'], p, jnp.ones((1, 2)))
    >>> h = g.group_of('a', 1).id
    >>> s = {h: jnp.arange(16.0)}
    >>> int(select_units(g, s, 0.3)[h].sum()), int(select_units(g, s, 0.3, round_to=8)[h].sum())
    (11, 8)
    """
    check_sparsity_value(sparsity, "sparsity")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer))
                                 or round_to < 1):
        raise PruningError(f"round_to must be a positive integer or None, got {round_to!r}")
    skip = ignored_groups(graph, ignore) | set(skip)
    groups = [g for g in graph.groups if g.prunable and g.id not in skip]
    arrays = {}
    for g in groups:
        if g.id not in scores:
            raise PruningError(f"select_units: no scores for group {g.id} ({g.kind}, size {g.size})")
        s = np.asarray(scores[g.id], np.float64)
        if s.shape != (g.size,):
            raise PruningError(f"select_units: scores of group {g.id} have shape {s.shape}, want ({g.size},)")
        if np.isnan(s).any():
            raise PruningError(f"select_units: scores of group {g.id} contain NaN")
        arrays[g.id] = s
    if not global_:
        keep = {g.id: _lowest(arrays[g.id], num_pruned(float(sparsity), g.size, min_keep=min_keep))
                for g in groups}
    else:
        keep = _global(groups, arrays, float(sparsity), min_keep)
    for g in groups:
        kept = _round_kept(int(keep[g.id].sum()), g.size, round_to)
        if kept != keep[g.id].sum():
            keep[g.id] = _lowest(arrays[g.id], g.size - kept)
    return keep


def _global(groups: list[Group], arrays: Mapping[int, np.ndarray], sparsity: float,
            min_keep: int) -> dict[int, np.ndarray]:
    # Mean normalisation makes groups of different widths and scales comparable (a layer of large
    # weights would otherwise never lose a unit).
    ids, scores = [], []
    for g in groups:
        s = arrays[g.id]
        mean = np.abs(s).mean()
        scores.append(s / mean if mean > 0 else s)
        ids.append(np.full(g.size, g.id))
    flat, owner = np.concatenate(scores) if scores else np.zeros(0), \
        np.concatenate(ids) if ids else np.zeros(0, int)
    unit = np.concatenate([np.arange(g.size) for g in groups]) if groups else np.zeros(0, int)
    budget = num_pruned(sparsity, flat.shape[0])
    left = {g.id: g.size for g in groups}
    keep = {g.id: np.ones(g.size, bool) for g in groups}
    # Tie-break by group order, then unit index: a lexsort on (unit, group, score).
    for i in np.lexsort((unit, owner, flat)):
        if budget == 0:
            break
        gid = int(owner[i])
        if left[gid] > min_keep:
            keep[gid][unit[i]] = False
            left[gid] -= 1
            budget -= 1
    return keep
