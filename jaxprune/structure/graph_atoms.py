"""Atoms: the axis bookkeeping behind :func:`jaxprune.structure.graph.trace`.

Every array axis of the traced jaxpr is a *layout*: a row-major product of atoms (``(T, 128)`` read
as ``(T, 4, 32)`` is the 128 atom split into a 4 atom and a 32 atom). An atom may also be a *sum* of
segment atoms (a concatenated, split or padded axis). Atoms that must shrink together are joined in
one union-find class; a class split by a reshape is split the same way in every member, so all
members of a class keep the same leaf sizes and their corresponding leaves stay in one class.
Classes carry refusal reasons (``model input``, an op the rules cannot follow ...) and marks,
merged on every union and inherited by the halves of a split.

>>> a = Atoms()
>>> x, y = a.new(8), a.new(8)
>>> a.join((x,), (y,)) and a.find(x) == a.find(y)
True
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import numpy as np

__all__ = ["Atoms", "Val", "Trace", "Layout", "fresh"]

Layout = tuple  # per array axis: a tuple of atoms (empty for a size-1 axis)


class Val(NamedTuple):
    """A traced value: its axis layouts and the parameter leaf it is a re-layout of (or None).

    >>> Val(((),), None).origin is None
    True
    """

    layout: tuple[Layout, ...]
    origin: Optional[int]


class Atoms:
    """Union-find over atoms with product/sum splits; see the module docstring.

    >>> a = Atoms()
    >>> w = a.new(12)
    >>> [a.size[i] for part in a.carve([w], [3, 4]) for i in part]
    [3, 4]
    """

    def __init__(self) -> None:
        self.size: list[int] = []
        self.parent: list[int] = []
        self.kids: dict[int, tuple[str, tuple[int, ...]]] = {}
        self.up: dict[int, int] = {}
        self.members: dict[int, list[int]] = {}
        self.reasons: dict[int, set] = {}
        self.marks: dict[int, set] = {}
        self.splits = 0

    def new(self, size: int) -> int:
        a = len(self.size)
        self.size.append(int(size))
        self.parent.append(a)
        self.members[a] = [a]
        return a

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def leaves(self, a: int) -> list[int]:
        if a not in self.kids:
            return [a]
        return [leaf for k in self.kids[a][1] for leaf in self.leaves(k)]

    def items(self, atoms: Sequence[int]) -> list[int]:
        """Product-level items: product splits expanded, sum nodes and leaves kept, size 1 dropped."""
        out: list[int] = []
        for a in atoms:
            if a in self.kids and self.kids[a][0] == "prod":
                out += self.items(self.kids[a][1])
            elif self.size[a] > 1:
                out.append(a)
        return out

    def segments(self, a: int) -> list[int]:
        """The segments of a sum node, nested sums expanded."""
        return [s for k in self.kids[a][1]
                for s in (self.segments(k) if self.kids.get(k, ("",))[0] == "sum" else [k])]

    def _tags(self, store: dict, a: int) -> set:
        return store.setdefault(self.find(a), set())

    def flag(self, atoms: Sequence[int], reason: str) -> None:
        for a in atoms:
            for leaf in self.leaves(a):
                self._tags(self.reasons, leaf).add(reason)

    def mark(self, atoms: Sequence[int], tag: str) -> None:
        for a in atoms:
            for leaf in self.leaves(a):
                self._tags(self.marks, leaf).add(tag)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if len(self.members[ra]) < len(self.members[rb]):
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.members[ra] += self.members.pop(rb)
        for store in (self.reasons, self.marks):
            if rb in store:
                store.setdefault(ra, set()).update(store.pop(rb))

    def split(self, leaf: int, kind: str, sizes: Sequence[int]) -> None:
        """Split every member of ``leaf``'s class into ``sizes`` (a row-major product or a sum)."""
        root = self.find(leaf)
        reasons, marks = self.reasons.pop(root, set()), self.marks.pop(root, set())
        members = self.members.pop(root)
        self.splits += 1
        rows = []
        for m in members:
            kids = tuple(self.new(s) for s in sizes)
            self.kids[m] = (kind, kids)
            for k in kids:
                self.up[k] = m
            rows.append(kids)
        for column in zip(*rows):
            for k in column[1:]:
                self.union(column[0], k)
            r = self.find(column[0])
            self.reasons.setdefault(r, set()).update(reasons)
            self.marks.setdefault(r, set()).update(marks)

    def _cut(self, items: list[int], bounds: set) -> Optional[bool]:
        """Split items so every stride in ``bounds`` falls between items; None if it cannot."""
        stride = math.prod(self.size[i] for i in items)
        for it in items:
            n = self.size[it]
            stride //= n
            cuts = sorted(t for t in bounds if stride < t < stride * n)
            if not cuts:
                continue
            chain = [stride] + cuts + [stride * n]
            if it in self.kids or any(hi % lo for lo, hi in zip(chain, chain[1:])):
                return None
            down = chain[::-1]
            self.split(it, "prod", [a // b for a, b in zip(down[:-1], down[1:])])
            return True
        return False

    @staticmethod
    def _bounds(sizes: Sequence[int]) -> set:
        out, s = set(), 1
        for n in reversed(sizes):
            s *= n
            out.add(s)
        return out

    def carve(self, atoms: Sequence[int], sizes: Sequence[int]) -> Optional[list[tuple]]:
        """``atoms`` (a product) cut into consecutive runs of the given sizes; None if impossible."""
        bounds = self._bounds(sizes)
        while True:
            items = self.items(atoms)
            done = self._cut(items, bounds)
            if done is None:
                return None
            if not done:
                break
        out, k = [], 0
        for n in sizes:
            run, p = [], 1
            while p < n:
                run.append(items[k])
                p *= self.size[items[k]]
                k += 1
            out.append(tuple(run))
        return out

    def join(self, la: Sequence[int], lb: Sequence[int]) -> bool:
        """Join two layouts of one size item by item (refining both); False (and no union) if their
        factors cannot be aligned."""
        for _ in range(64):
            before = self.splits
            fa, fb = self.items(la), self.items(lb)
            sa, sb = [self.size[i] for i in fa], [self.size[i] for i in fb]
            if sa != sb:
                bounds = self._bounds(sa) | self._bounds(sb)
                if self._cut(fa, bounds) is None or self._cut(fb, bounds) is None:
                    return False
                continue
            for x, y in zip(fa, fb):
                if not self._pair(x, y):
                    return False
                if self.splits != before:
                    break
            if self.splits == before:
                return True
        return False

    def _pair(self, x: int, y: int) -> bool:
        sx, sy = self.kids.get(x), self.kids.get(y)
        if sx is None and sy is None:
            self.union(x, y)
            return True
        if sx is None or sy is None:
            leaf, node = (x, sy) if sx is None else (y, sx)
            self.split(leaf, "sum", [self.size[k] for k in node[1]])
            return True
        gx, gy = self.segments(x), self.segments(y)
        zx, zy = [self.size[k] for k in gx], [self.size[k] for k in gy]
        if zx != zy:
            offs = set(np.cumsum(zx).tolist()) | set(np.cumsum(zy).tolist())
            for segs in (gx, gy):
                start = 0
                for seg in segs:
                    inner = sorted(o - start for o in offs if start < o < start + self.size[seg])
                    if inner:
                        if seg in self.kids:
                            return False
                        edges = [0] + inner + [self.size[seg]]
                        self.split(seg, "sum", [b - a for a, b in zip(edges, edges[1:])])
                        return True
                    start += self.size[seg]
            return False
        return all(self.join((p,), (q,)) for p, q in zip(gx, gy))


class Trace(NamedTuple):
    """What one walk recorded besides the classes.

    >>> Trace([], [], []).producers
    []
    """

    producers: list  # (leaf index, atom): a kernel's free axis, an embedding table's feature axis
    attention: list  # (contracted, batch, out) atoms of activation x activation products
    reduced: list  # (primitive, reduced atoms, kept atoms)


def fresh(atoms: Atoms, shape: Sequence[int], reason: Optional[str] = None) -> tuple[Layout, ...]:
    """A layout of new atoms for ``shape`` (optionally refused with ``reason``).

    >>> fresh(Atoms(), (1, 3))
    ((), (0,))
    """
    out = tuple(() if n == 1 else (atoms.new(n),) for n in shape)
    if reason:
        atoms.flag([a for ax in out for a in ax], reason)
    return out
