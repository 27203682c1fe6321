"""Applying masks, mask algebra and summaries.

Masks are trees of boolean arrays with the params' structure (True = keep; all-True for a leaf that is
not pruned, never ``None``).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.errors import PruningError
from jaxprune.paths import Selector, check_same_structure, leaf_paths, matches, selected_paths

__all__ = [
    "apply_masks",
    "intersect_masks",
    "union_masks",
    "is_nested",
    "dense_masks",
    "LeafSummary",
    "Summary",
    "summary",
]


def _check_masks(reference: Any, masks: Any, name: str = "masks") -> None:
    check_same_structure(reference, masks, name)
    for path, m in zip(leaf_paths(masks), jax.tree.leaves(masks)):
        if jnp.asarray(m).dtype != jnp.bool_:
            raise PruningError(f"{name} leaf '{path}' has dtype {jnp.asarray(m).dtype}, expected bool")


def apply_masks(params: Any, masks: Any) -> Any:
    """Zeros the pruned entries: ``where(mask, w, 0)``, keeping each leaf's dtype.

    >>> apply_masks({'w': jnp.array([1.0, 2.0])}, {'w': jnp.array([True, False])})['w'].tolist()
    [1.0, 0.0]
    """
    _check_masks(params, masks)
    return jax.tree.map(lambda w, m: jnp.where(m, w, jnp.zeros((), jnp.asarray(w).dtype)),
                        params, masks)


def dense_masks(params: Any) -> Any:
    """All-True masks (nothing pruned) with the params' structure.

    >>> dense_masks({'w': jnp.zeros(2)})['w'].tolist()
    [True, True]
    """
    return jax.tree.map(lambda w: jnp.ones(jnp.shape(w), bool), params)


def intersect_masks(a: Any, b: Any) -> Any:
    """Kept where both keep (the sparser combination).

    >>> intersect_masks({'w': jnp.array([True, True])}, {'w': jnp.array([True, False])})['w'].tolist()
    [True, False]
    """
    _check_masks(a, b, "second mask tree")
    return jax.tree.map(jnp.logical_and, a, b)


def union_masks(a: Any, b: Any) -> Any:
    """Kept where either keeps (the denser combination).

    >>> union_masks({'w': jnp.array([False, False])}, {'w': jnp.array([True, False])})['w'].tolist()
    [True, False]
    """
    _check_masks(a, b, "second mask tree")
    return jax.tree.map(jnp.logical_or, a, b)


def is_nested(inner: Any, outer: Any) -> bool:
    """True when every entry kept by ``inner`` is also kept by ``outer`` (``inner ⊆ outer``).

    >>> is_nested({'w': jnp.array([True, False])}, {'w': jnp.array([True, True])})
    True
    """
    _check_masks(outer, inner, "inner mask tree")
    return all(bool(jnp.all(~i | o)) for i, o in zip(jax.tree.leaves(inner), jax.tree.leaves(outer)))


class LeafSummary(NamedTuple):
    """One leaf's counts: ``bytes`` is the dense storage of the leaf at its dtype."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    size: int
    nonzero: int
    sparsity: float
    bytes: int
    prunable: bool


class Summary(NamedTuple):
    """Per-leaf and total counts; ``table()`` prints aligned text, ``to_dict()`` is JSON-ready."""

    leaves: tuple[LeafSummary, ...]

    def _totals(self, only_prunable: bool) -> dict[str, Any]:
        rows = [r for r in self.leaves if r.prunable or not only_prunable]
        size = sum(r.size for r in rows)
        nz = sum(r.nonzero for r in rows)
        return {"size": size, "nonzero": nz, "sparsity": 1.0 - nz / size if size else 0.0,
                "bytes": sum(r.bytes for r in rows)}

    @property
    def total(self) -> dict[str, Any]:
        """Counts over every leaf."""
        return self._totals(False)

    @property
    def prunable(self) -> dict[str, Any]:
        """Counts over the leaves the selector chose (the 'sparsity over prunable weights')."""
        return self._totals(True)

    def to_dict(self) -> dict[str, Any]:
        """``{'leaves': [...], 'total': {...}, 'prunable': {...}}`` of plain Python values."""
        return {"leaves": [dict(r._asdict(), shape=list(r.shape)) for r in self.leaves],
                "total": self.total, "prunable": self.prunable}

    def table(self) -> str:
        """An aligned text table, one row per leaf plus the totals."""
        head = ("leaf", "shape", "size", "nonzero", "sparsity", "bytes")
        rows = [(r.path + ("" if r.prunable else " (dense)"), "x".join(map(str, r.shape)) or "()",
                 str(r.size), str(r.nonzero), f"{r.sparsity:.2%}", str(r.bytes)) for r in self.leaves]
        for name, t in (("prunable", self.prunable), ("total", self.total)):
            rows.append((name, "", str(t["size"]), str(t["nonzero"]), f"{t['sparsity']:.2%}",
                         str(t["bytes"])))
        widths = [max(len(x) for x in col) for col in zip(head, *rows)]
        fmt = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(r, widths)))
        lines = [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def summary(tree: Any, masks: Optional[Any] = None, *, include: Selector = None) -> Summary:
    """Counts per leaf and in total for a params tree (nonzeros) or a mask tree (True entries).

    With ``masks`` the counts are of ``params`` after masking. ``include`` marks which leaves count as
    prunable (default: kernels).

    >>> s = summary({'w': jnp.array([[1.0, 0.0], [0.0, 2.0]]), 'b': jnp.zeros(2)}, include='w')
    >>> s.prunable['sparsity'], s.total['nonzero']
    (0.5, 2)
    """
    if masks is not None:
        _check_masks(tree, masks)
    mask_leaves = jax.tree.leaves(masks) if masks is not None else [None] * len(jax.tree.leaves(tree))
    # An explicit include goes through selected_paths, so a pattern that matches nothing raises; the
    # default may select nothing (a tree without kernels has no prunable leaves).
    chosen = None if include is None else set(selected_paths(tree, include))
    rows = []
    for path, leaf, m in zip(leaf_paths(tree), jax.tree.leaves(tree), mask_leaves):
        arr = np.asarray(leaf)
        nz_arr = (arr != 0) if m is None else ((arr != 0) & np.asarray(m))
        size = int(arr.size)
        nz = int(np.count_nonzero(nz_arr))
        rows.append(LeafSummary(path, tuple(arr.shape), str(arr.dtype), size, nz,
                                1.0 - nz / size if size else 0.0, int(arr.nbytes),
                                matches(None, path, arr) if chosen is None else path in chosen))
    return Summary(tuple(rows))
