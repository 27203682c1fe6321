"""The dependency graph of a JAX model: every group of parameter axes that must shrink together.

:func:`trace` runs ``jax.make_jaxpr(fn)(params, *example_args)`` once and follows every axis of every
value through the jaxpr (:mod:`jaxprune.structure.graph_rules` holds the per-primitive rules):
contractions join a kernel's input axis with the axis it multiplies, element-wise ops join the axes
they align (a residual add couples its producers into one residual group), reshapes split or merge
axes (``(T, heads*head_dim)`` <-> ``(T, heads, head_dim)`` makes heads and head_dim their own units),
concatenations and splits make an axis a sum of segments. A :class:`Group` is one class of joined
axes: its units, the (leaf, axis) slices each unit occupies (:class:`Member`), whether it may be
pruned and, if not, why (a model input or output, or an op the rules do not understand).

>>> import jax.numpy as jnp
>>> p = {'w1': jnp.ones((3, 8)), 'b1': jnp.zeros(8), 'w2': jnp.ones((8, 2))}
>>> f = lambda p, x: jnp.maximum(x @ p['w1'] + p['b1'][None], 0.0) @ p['w2']
>>> g = trace(f, p, jnp.ones((4, 3)))
>>> [(gr.size, gr.prunable, [m.path for m in gr.members]) for gr in g.groups if gr.size == 8]
[(8, True, ['b1', 'w1', 'w2'])]
>>> small = g.shrink(p, {g.group_of('b1', 0).id: jnp.arange(8) < 5})
>>> small['w1'].shape, small['w2'].shape
((3, 5), (5, 2))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.errors import PruningError
from jaxprune.paths import path_str
from jaxprune.structure.graph_atoms import Atoms, Val, fresh
from jaxprune.structure.graph_rules import walk

__all__ = ["Member", "Group", "Graph", "trace", "trace_linen", "trace_nnx"]

_FIRST = ("model output", "model input")


class Member(NamedTuple):
    """The slice of one leaf axis that a group's units occupy.

    Unit ``u`` occupies, along ``axis``, the indices ``offset + r*period + u*stride + c`` for
    ``r < repeat`` and ``c < count``. A plain member (one unit = one index) is
    ``stride=1, count=1, offset=0, repeat=1``; a head inside a merged ``heads*head_dim`` axis is a
    block of ``count = head_dim`` indices at ``u*head_dim``; the head_dim unit of that axis repeats
    once per head (``repeat = heads``, ``period = heads' block``); a segment of a concatenated axis
    starts at ``offset``.

    >>> Member('fc/kernel', 1)
    Member(path='fc/kernel', axis=1, stride=1, count=1, offset=0, repeat=1, period=0)
    """

    path: str
    axis: int
    stride: int = 1
    count: int = 1
    offset: int = 0
    repeat: int = 1
    period: int = 0

    def unit_indices(self, units: Any) -> np.ndarray:
        """The axis indices that the given units occupy (sorted).

        >>> Member('qkv', 1, stride=4, count=4).unit_indices([1])
        array([4, 5, 6, 7])
        """
        u = np.asarray(units, int).reshape(1, -1, 1) * self.stride
        r = np.arange(self.repeat).reshape(-1, 1, 1) * self.period
        return np.sort((self.offset + r + u + np.arange(self.count).reshape(1, 1, -1)).ravel())


class Group(NamedTuple):
    """Units that shrink together: ``size`` of them, each occupying a slice of every member.

    ``kind`` is ``'features'`` (hidden units, channels), ``'residual'`` (an axis on which two
    activations are added: a ResNet's or transformer's residual stream), ``'heads'``, ``'head_dim'`` or ``'groups'`` (GroupNorm groups, grouped
    convolutions). ``producers`` are the leaves whose output axis creates the units (kernels,
    embedding tables); ``reduced_by`` names the reductions that run over the units (a LayerNorm's
    mean and variance): removing units there changes what the statistic sees, so the shrunk model
    equals the masked one only when the masked reference normalises over the kept units.

    >>> Group(0, 4, 'features', (Member('w', 1),), True, None, ('w',)).reduced_by
    ()
    """

    id: int
    size: int
    kind: str
    members: tuple[Member, ...]
    prunable: bool
    reason: Optional[str]
    producers: tuple[str, ...]
    reduced_by: tuple[str, ...] = ()


def _matches(path: str, layer: str) -> bool:
    layer = layer.strip("/")
    return path == layer or path.startswith(layer + "/") or f"/{layer}/" in f"/{path}"


@dataclasses.dataclass(frozen=True)
class Graph:
    """The groups of a traced model and the shapes of its parameter leaves (by path).

    >>> g = trace(lambda p, x: x @ p['w'] @ p['v'], {'w': jnp.ones((2, 3)), 'v': jnp.ones((3, 1))},
    ...           jnp.ones((1, 2)))
    >>> [(gr.size, gr.prunable, gr.reason) for gr in g.groups]
    [(3, True, None), (2, False, 'model input')]
    """

    groups: tuple[Group, ...]
    shapes: Mapping[str, tuple[int, ...]]

    def indices(self, member: Member, keep_units: Any) -> np.ndarray:
        """Kept indices along ``member.axis`` when only the units where ``keep_units`` is True stay.

        >>> Graph((), {'w': (4, 6)}).indices(Member('w', 1, stride=2, count=2), [True, False, True])
        array([0, 1, 4, 5])
        """
        keep = np.asarray(keep_units, bool)
        n = self.shapes[member.path][member.axis]
        return np.setdiff1d(np.arange(n), member.unit_indices(np.flatnonzero(~keep)))

    def _removed(self, keep: Mapping[int, Any]) -> dict[tuple[str, int], np.ndarray]:
        by_id = {g.id: g for g in self.groups}
        gone: dict[tuple[str, int], list] = {}
        for gid, mask in keep.items():
            if gid not in by_id:
                raise PruningError(f"shrink: no group with id {gid!r} (ids 0..{len(self.groups) - 1})")
            g, mask = by_id[gid], np.asarray(mask)
            where = f"group {gid} ({g.kind}, {g.members[0].path} axis {g.members[0].axis})"
            if mask.shape != (g.size,):
                raise PruningError(f"shrink: keep[{gid}] has shape {mask.shape}; {where} has "
                                   f"{g.size} units")
            mask = mask.astype(bool)
            if mask.all():
                continue
            if not g.prunable:
                raise PruningError(f"shrink: {where} is not prunable: {g.reason}")
            if not mask.any():
                raise PruningError(f"shrink: keep[{gid}] removes every unit of {where}")
            for m in g.members:
                gone.setdefault((m.path, m.axis), []).append(m.unit_indices(np.flatnonzero(~mask)))
        return {k: np.unique(np.concatenate(v)) for k, v in gone.items()}

    def _apply(self, params: Any, keep: Mapping[int, Any], fn: Callable) -> Any:
        gone = self._removed(keep)

        def one(path: Any, leaf: Any) -> Any:
            name = path_str(path)
            for axis in range(np.ndim(leaf)):
                if (name, axis) in gone:
                    leaf = fn(leaf, axis, np.setdiff1d(np.arange(np.shape(leaf)[axis]),
                                                       gone[(name, axis)]))
            return leaf

        return jax.tree_util.tree_map_with_path(one, params)

    def shrink(self, params: Any, keep: Mapping[int, Any]) -> Any:
        """A smaller pytree of the same structure: every member slice of the removed units dropped.

        ``keep`` maps group ids to boolean masks over their units; groups not named keep all.

        >>> g = trace(lambda p, x: x @ p['w'] @ p['v'], {'w': jnp.ones((2, 3)), 'v': jnp.ones((3, 1))},
        ...           jnp.ones((1, 2)))
        >>> jax.tree.map(jnp.shape, g.shrink({'w': jnp.ones((2, 3)), 'v': jnp.ones((3, 1))},
        ...                                  {0: [True, False, True]}))
        {'v': (2, 1), 'w': (2, 2)}
        """
        def take(leaf: Any, axis: int, kept: np.ndarray) -> Any:
            return leaf[(slice(None),) * axis + (kept,)]

        return self._apply(params, keep, take)

    def masked(self, params: Any, keep: Mapping[int, Any]) -> Any:
        """Same shapes as ``params``, with every member slice of the removed units set to zero.

        >>> p = {'w': jnp.ones((2, 3)), 'v': jnp.ones((3, 1))}
        >>> g = trace(lambda p, x: x @ p['w'] @ p['v'], p, jnp.ones((1, 2)))
        >>> g.masked(p, {0: [True, False, True]})['v'][:, 0]
        Array([1., 0., 1.], dtype=float32)
        """
        def zero(leaf: Any, axis: int, kept: np.ndarray) -> Any:
            shape = [1] * np.ndim(leaf)
            shape[axis] = np.shape(leaf)[axis]
            mask = np.isin(np.arange(shape[axis]), kept).reshape(shape)
            return np.where(mask, leaf, 0) if isinstance(leaf, np.ndarray) else \
                jnp.where(mask, leaf, jnp.zeros((), jnp.asarray(leaf).dtype))

        return self._apply(params, keep, zero)

    def groups_of(self, path: str, axis: int) -> tuple[Group, ...]:
        """Every group with a member on ``(path, axis)`` (several for a split or concatenated axis).

        >>> trace(lambda p, x: x @ p['w'] @ p['v'], {'w': jnp.ones((2, 3)), 'v': jnp.ones((3, 1))},
        ...       jnp.ones((1, 2))).groups_of('v', 0)[0].size
        3
        """
        return tuple(g for g in self.groups if any(m.path == path and m.axis == axis
                                                   for m in g.members))

    def group_of(self, path: str, axis: int) -> Optional[Group]:
        """The group on ``(path, axis)``; where several share the axis, the outermost (e.g. heads).

        >>> trace(lambda p, x: x @ p['w'] @ p['v'], {'w': jnp.ones((2, 3)), 'v': jnp.ones((3, 1))},
        ...       jnp.ones((1, 2))).group_of('v', 1) is None
        True
        """
        found = self.groups_of(path, axis)
        if not found:
            return None
        return max(found, key=lambda g: max(m.stride for m in g.members
                                            if m.path == path and m.axis == axis))

    def groups_for_layer(self, layer: str) -> tuple[Group, ...]:
        """The groups whose units a layer produces (``layer`` is a path prefix, e.g. ``'fc1'``).

        >>> trace(lambda p, x: x @ p['fc']['w'] @ p['v'], {'fc': {'w': jnp.ones((2, 3))},
        ...       'v': jnp.ones((3, 1))}, jnp.ones((1, 2))).groups_for_layer('fc')[0].size
        3
        """
        return tuple(g for g in self.groups if any(_matches(p, layer) for p in g.producers))

    def table(self) -> str:
        """A readable listing: one line per group (id, kind, size, prunable or why not, members).

        >>> print(trace(lambda p, x: x @ p['w'] @ p['v'], {'w': jnp.ones((2, 3)),
        ...             'v': jnp.ones((3, 1))}, jnp.ones((1, 2))).table())
        id  kind      size  prunable  members
        0   features     3  yes       v:0  w:1
        1   features     2  no (model input) w:0
        """
        lines = [f"{'id':<3} {'kind':<9} {'size':>4}  {'prunable':<9} members"]
        for g in self.groups:
            state = "yes" if g.prunable else f"no ({g.reason})"
            mems = "  ".join(f"{m.path}:{m.axis}" if m[2:] == (1, 1, 0, 1, 0) else
                             f"{m.path}:{m.axis}[+{m.offset} {m.stride}x{m.count} r{m.repeat}]"
                             for m in g.members)
            note = f"  (reduced by {', '.join(g.reduced_by)})" if g.reduced_by else ""
            lines.append(f"{g.id:<3} {g.kind:<9} {g.size:>4}  {state:<9} {mems}{note}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _leaf_members(A: Atoms, atom: int) -> Optional[list[tuple[int, int, int, int, int]]]:
    """(class leaf, stride, offset, repeat, period) for each unit class along one leaf axis."""
    def product(items: list[int], base: int, allow_sum: bool) -> Optional[list]:
        out, inner = [], int(np.prod([A.size[i] for i in items]))
        outer = 1
        for it in items:
            inner //= A.size[it]
            period = A.size[it] * inner
            if it not in A.kids:
                out.append((it, inner, base, outer, period))
            elif allow_sum:
                start = 0
                for seg in A.segments(it):
                    if seg in A.kids:
                        return None
                    if A.size[seg] > 1:
                        out.append((seg, inner, base + start * inner, outer, period))
                    start += A.size[seg]
            else:
                return None
            outer *= A.size[it]
        return out

    if atom in A.kids and A.kids[atom][0] == "sum":
        out, start = [], 0
        for seg in A.segments(atom):
            if A.size[seg] > 1:
                part = product(A.items([seg]), start, False)
                if part is None:
                    return None
                out += part
            start += A.size[seg]
        return out
    return product(A.items([atom]), 0, True)


def _kind(marks: set, producers: set, reasons: set) -> str:
    if "model input" in reasons:
        return "features"
    for kind in ("heads", "head_dim", "groups"):
        if kind in marks:
            return kind
    # A sum of two activations that two layers write (a normalisation's x - mean is not one).
    return "residual" if "residual" in marks and len(producers) > 1 else "features"


def _reason(reasons: set) -> Optional[str]:
    if not reasons:
        return None
    return "; ".join([r for r in _FIRST if r in reasons] + sorted(reasons - set(_FIRST)))


def trace(fn: Callable[..., Any], params: Any, *example_args: Any) -> Graph:
    """Trace ``fn(params, *example_args)`` and group every parameter axis that must shrink together.

    ``fn`` must return the model's outputs (logits), not a loss: the axes of the outputs and of
    ``example_args`` are never prunable.

    >>> g = trace(lambda p, x: jnp.tanh(x @ p['a']) @ p['b'], {'a': jnp.ones((3, 5)),
    ...           'b': jnp.ones((5, 2))}, jnp.ones((1, 3)))
    >>> [(gr.kind, gr.size, gr.producers) for gr in g.groups if gr.prunable]
    [('features', 5, ('a',))]
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    paths = [path_str(p) for p, _ in flat]
    try:
        closed = jax.make_jaxpr(fn)(params, *example_args)
    except Exception as err:  # the user's function failed: say where, keep the cause
        raise PruningError(f"structure.trace: fn(params, *example_args) failed to trace: {err}") \
            from err
    A = Atoms()
    vals = [Val(fresh(A, np.shape(x)), i) for i, (_, x) in enumerate(flat)]
    for var in closed.jaxpr.invars[len(flat):]:
        vals.append(Val(fresh(A, var.aval.shape, "model input"), None))
    outs, rec = walk(closed, vals, A)
    A.flag([a for v in outs for ax in v.layout for a in ax], "model output")
    return _assemble(A, rec, vals[:len(flat)], paths, [tuple(np.shape(x)) for _, x in flat])


def _assemble(A: Atoms, rec: Any, vals: list, paths: list[str], shapes: list[tuple]) -> Graph:
    def root(leaf: int) -> int:
        return A.find(leaf)

    producers: dict[int, set] = {}
    for leaf_index, atoms in rec.producers:
        for a in atoms:
            for leaf in A.leaves(a):
                producers.setdefault(root(leaf), set()).add(paths[leaf_index])
    marks: dict[int, set] = {}
    for contracted, free, out in rec.attention:
        if any("model input" not in A.reasons.get(root(leaf), ()) for a in contracted
               for leaf in A.leaves(a) if A.size[leaf] > 1):
            for a in out:
                for leaf in A.leaves(a):
                    if "model input" not in A.reasons.get(root(leaf), ()):
                        marks.setdefault(root(leaf), set()).add("heads")
        for a in contracted + free:
            for leaf in A.leaves(a):
                if "model input" not in A.reasons.get(root(leaf), ()):
                    marks.setdefault(root(leaf), set()).add("head_dim")
    reduced: dict[int, set] = {}
    for name, gone, kept in rec.reduced:
        ups = {A.up.get(leaf) for a in gone for leaf in A.leaves(a)} - {None}
        for a in gone:
            for leaf in A.leaves(a):
                reduced.setdefault(root(leaf), set()).add(name)
        for a in kept:
            for leaf in A.leaves(a):
                if A.up.get(leaf) in ups and "model input" not in A.reasons.get(root(leaf), ()):
                    marks.setdefault(root(leaf), set()).add("groups")
    classes: dict[int, list] = {}
    for i, val in enumerate(vals):
        for axis, lay in enumerate(val.layout):
            for atom in lay:
                found = _leaf_members(A, atom)
                if found is None:
                    A.flag([atom], "nested split/concatenate layout")
                    continue
                for leaf, stride, offset, repeat, period in found:
                    m = Member(paths[i], axis, stride, stride, offset, repeat,
                               period if repeat > 1 else 0)
                    classes.setdefault(root(leaf), []).append(((i, axis, offset), m))
    groups = []
    for r, found in classes.items():
        size = A.size[A.members[r][0]] if r in A.members else None
        if size is None or size < 2:
            continue
        reasons = set(A.reasons.get(r, ()))
        prod = producers.get(r, set())
        if not prod and not reasons:
            reasons.add("no layer produces these units")
        mk = marks.get(r, set()) | A.marks.get(r, set())
        found.sort(key=lambda t: t[0])
        groups.append((found[0][0], size, _kind(mk, prod, reasons), tuple(dict.fromkeys(m for _, m in found)),
                       reasons, tuple(sorted(prod)), tuple(sorted(reduced.get(r, ())))))
    groups.sort(key=lambda g: g[0])
    out = tuple(Group(i, size, kind, mem, not reasons, _reason(reasons), prod, red)
                for i, (_, size, kind, mem, reasons, prod, red) in enumerate(groups))
    return Graph(out, dict(zip(paths, shapes)))


def trace_linen(model: Any, variables: Any, *example_args: Any, **apply_kwargs: Any) -> Graph:
    """:func:`trace` of a linen module over all of its variables (paths ``params/...``,
    ``batch_stats/...``), called as ``model.apply(variables, *example_args, **apply_kwargs)``.

    >>> import flax.linen as nn
    >>> m = nn.Sequential([nn.Dense(6), nn.relu, nn.Dense(2)])
    >>> v = m.init(jax.random.key(0), jnp.ones((1, 3)))
    >>> [(g.size, g.producers) for g in trace_linen(m, v, jnp.ones((1, 3))).groups if g.prunable]
    [(6, ('params/layers_0/kernel',))]
    """
    return trace(lambda v, *a: model.apply(v, *a, **apply_kwargs), variables, *example_args)


def trace_nnx(model: Any, *example_args: Any) -> Graph:
    """:func:`trace` of an nnx module over its whole state (``nnx.split(model)[1]``; paths
    ``fc/kernel`` ...), called as ``model(*example_args)``.

    >>> from flax import nnx
    >>> class MLP(nnx.Module):
    ...     def __init__(self, rngs):
    ...         self.a, self.b = nnx.Linear(3, 6, rngs=rngs), nnx.Linear(6, 2, rngs=rngs)
    ...     def __call__(self, x):
    ...         return self.b(nnx.relu(self.a(x)))
    >>> [(g.size, g.producers) for g in trace_nnx(MLP(nnx.Rngs(0)), jnp.ones((1, 3))).groups
    ...  if g.prunable]
    [(6, ('a/kernel',))]
    """
    from flax import nnx

    graphdef, state = nnx.split(model)
    return trace(lambda s, *a: nnx.merge(graphdef, s)(*a), state, *example_args)
