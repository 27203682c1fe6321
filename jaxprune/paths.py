"""Readable leaf paths and leaf selectors.

Every leaf of a parameter pytree gets a path string such as ``'params/Dense_0/kernel'``: the keys of
``jax.tree_util.tree_flatten_with_path`` joined by ``/``. The trailing ``.value`` that ``nnx.State``
adds to each variable is dropped, so a linen dict and the equivalent ``nnx.State`` give the same
paths. Leaves are chosen by a *selector*:

* a glob string matched against the whole path (``'*/Dense_0/*'``, ``'*kernel'``);
* a compiled regular expression (``re.compile(r'Dense_[01]')``), searched in the path;
* a predicate ``(path, leaf) -> bool``;
* a list/tuple of selectors (a leaf is chosen if any matches).

The default selector :func:`kernels` chooses weight matrices and conv kernels (``ndim >= 2``): biases,
norm scales and running statistics (all 1-D) are not pruned.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Callable, Sequence, Union

import jax
import numpy as np

from jaxprune.errors import PruningError

Predicate = Callable[[str, Any], bool]
Selector = Union[str, "re.Pattern[str]", Predicate, Sequence[Any], None]

__all__ = [
    "Predicate",
    "Selector",
    "path_str",
    "leaf_paths",
    "map_with_path",
    "kernels",
    "matches",
    "selected_paths",
    "check_same_structure",
]


def _key_str(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(path: Sequence[Any]) -> str:
    """Formats a ``tree_flatten_with_path`` key path as ``'a/b/c'``.

    >>> import jax
    >>> (p, _), = jax.tree_util.tree_flatten_with_path({'params': {'w': 1.0}})[0]
    >>> path_str(p)
    'params/w'
    """
    keys = list(path)
    # nnx.State wraps each leaf in a Variable whose array sits under `.value`; drop it so linen and
    # nnx trees share path names.
    if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name == "value":
        keys = keys[:-1]
    return "/".join(_key_str(k) for k in keys)


def leaf_paths(tree: Any) -> list[str]:
    """Path strings of all leaves, in ``jax.tree.leaves`` order.

    >>> leaf_paths({'b': 1, 'a': {'k': 2}})
    ['a/k', 'b']
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [path_str(p) for p, _ in flat]


def map_with_path(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """``jax.tree.map`` whose function also receives the leaf's path string first.

    >>> map_with_path(lambda p, x: p, {'a': 1})
    {'a': 'a'}
    """
    return jax.tree_util.tree_map_with_path(lambda p, *xs: fn(path_str(p), *xs), tree, *rest)


def kernels(path: str, leaf: Any) -> bool:
    """Default selector: weight matrices and conv kernels (``ndim >= 2``), not biases or norm scales.

    >>> kernels('params/Dense_0/kernel', np.zeros((3, 4))), kernels('params/Dense_0/bias', np.zeros(4))
    (True, False)
    """
    del path
    return np.ndim(leaf) >= 2


def _compile(selector: Selector) -> Predicate:
    if selector is None:
        return kernels
    if isinstance(selector, str):
        pattern = selector
        return lambda path, leaf: fnmatch.fnmatchcase(path, pattern)
    if isinstance(selector, re.Pattern):
        return lambda path, leaf: selector.search(path) is not None
    if callable(selector):
        return selector
    if isinstance(selector, (list, tuple)):
        if not selector:
            raise PruningError("include: an empty list of selectors selects nothing")
        preds = [_compile(s) for s in selector]
        return lambda path, leaf: any(p(path, leaf) for p in preds)
    raise PruningError(
        f"include: expected a glob string, a compiled regex, a predicate (path, leaf) -> bool or a "
        f"list of them, got {type(selector).__name__}"
    )


def matches(selector: Selector, path: str, leaf: Any) -> bool:
    """Whether ``selector`` chooses the leaf at ``path``. ``None`` means :func:`kernels`.

    >>> matches('*/kernel', 'params/Dense_0/kernel', None)
    True
    """
    return bool(_compile(selector)(path, leaf))


def selected_paths(tree: Any, include: Selector = None, exclude: Selector = ()) -> list[str]:
    """Paths of the leaves chosen by ``include`` and not by ``exclude``; an empty result is an error.

    Args:
      tree: any pytree of arrays.
      include: selector of leaves to prune (default :func:`kernels`).
      exclude: selector of leaves to leave dense even if included (``()`` excludes nothing).

    >>> selected_paths({'w': np.zeros((2, 2)), 'b': np.zeros(2)})
    ['w']
    """
    inc = _compile(include)
    exc = (lambda p, x: False) if exclude in ((), [], None) else _compile(exclude)
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = [path_str(p) for p, x in flat if inc(path_str(p), x) and not exc(path_str(p), x)]
    if not out:
        raise PruningError(
            f"include={include!r} exclude={exclude!r} selects no leaf; the tree's leaves are "
            f"{[path_str(p) for p, _ in flat]}"
        )
    return out


def check_same_structure(reference: Any, other: Any, name: str, ref_name: str = "params") -> None:
    """Raises a :class:`PruningError` naming the first differing leaf when two trees differ.

    Leaf shapes must match too (``other`` leaves may be of any dtype).

    >>> check_same_structure({'w': np.zeros(2)}, {'w': np.ones(2)}, 'scores')
    """
    ref_flat, ref_def = jax.tree_util.tree_flatten_with_path(reference)
    oth_flat, oth_def = jax.tree_util.tree_flatten_with_path(other)
    ref_paths = [path_str(p) for p, _ in ref_flat]
    oth_paths = [path_str(p) for p, _ in oth_flat]
    if ref_paths != oth_paths:
        missing = [p for p in ref_paths if p not in oth_paths]
        extra = [p for p in oth_paths if p not in ref_paths]
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise PruningError(f"{name} does not have the structure of {ref_name}: {detail}")
    if ref_def != oth_def:
        raise PruningError(f"{name} has the leaf paths of {ref_name} but a different tree type: "
                           f"{oth_def} vs {ref_def}")
    for path, (_, a), (_, b) in zip(ref_paths, ref_flat, oth_flat):
        if np.shape(a) != np.shape(b):
            raise PruningError(
                f"{name} leaf '{path}' has shape {np.shape(b)}, {ref_name} has {np.shape(a)}"
            )
