"""Private pytree helpers shared by the quant modules.

Leaf paths come from the core's :func:`jaxprune.paths.path_str` ('params/Dense_0/kernel' for linen
and nnx alike).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.errors import PruningError
from jaxprune.paths import kernels, path_str

Include = Callable[[str, Any], bool]


def is_float(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)


def default_include(path: str, leaf: Any) -> bool:
    """Default leaf selection: the pruning default (:func:`jaxprune.paths.kernels`: leaves named
    ``kernel`` with ``ndim >= 2``) restricted to floating arrays. Not biases, norm scales, embeddings,
    positional tables or the ``(heads, head_dim)`` biases of attention projections. A bare array
    (path ``''``: the whole tree is one leaf) is what the caller asked for: selected when floating."""
    return is_float(leaf) and (path == "" or kernels(path, leaf))


def resolve_include(include: Include | None, tree: Any, is_leaf=None) -> Include:
    """``include``, or the default when it is None; the default must select some leaf of a tree that
    has floating matrices (else the tree has no flax names, and quantizing nothing would be silent)."""
    if include is not None:
        return include
    pairs = leaves_with_paths(tree, is_leaf=is_leaf)
    if not any(default_include(p, x) for p, x in pairs):
        matrix = next((p for p, x in pairs if is_float(x) and np.ndim(x) >= 2), None)
        if matrix is not None:
            raise PruningError(f"no leaf named 'kernel' to quantize (first floating matrix: {matrix!r}); "
                               "for trees without flax's names pass include=jaxprune.matrices or "
                               "your own (path, leaf) -> bool")
    return default_include


def is_tracer(leaf: Any) -> bool:
    return isinstance(leaf, jax.core.Tracer)


def check_finite(path: str, leaf: Any) -> None:
    """Raise on NaN/inf in a concrete leaf; traced leaves (inside jit) cannot be checked and pass."""
    if is_tracer(leaf):
        return
    arr = np.asarray(leaf)
    if not np.isfinite(arr).all():
        bad = int(arr.size - np.isfinite(arr).sum())
        raise PruningError(f"{path}: {bad} non-finite value(s) (NaN/inf); cannot quantize this leaf")


def map_with_paths(fn: Callable[[str, Any], Any], tree: Any, is_leaf=None) -> Any:
    """``tree_map_with_path`` with the path already formatted as a string."""
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_str(p), x), tree, is_leaf=is_leaf)


def leaves_with_paths(tree: Any, is_leaf=None) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [(path_str(p), x) for p, x in flat]
