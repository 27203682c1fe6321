"""Readable leaf paths and leaf selectors.

Every leaf of a parameter pytree gets a path string such as ``'params/Dense_0/kernel'``: the keys of
``jax.tree_util.tree_flatten_with_path`` joined by ``/``. The trailing ``.value`` that ``nnx.State``
(and linen's ``nn.Partitioned``) adds to each variable is dropped, so a linen dict and the equivalent
``nnx.State`` give the same paths. Two leaves with the same path string (``{'a': {'b': x}, 'a/b': y}``)
are an error wherever paths are used: a selector could not tell them apart.

**The default selection** (:func:`kernels`) is chosen by what a leaf *is*, not by its rank: leaves
whose own key is ``kernel`` with ``ndim >= 2`` — the weights of flax's Dense, DenseGeneral, Conv,
ConvTranspose, ConvLocal, Einsum, nnx Linear/LinearGeneral/Conv/Einsum and the query/key/value/out
projections of attention. Biases, norm scales, ``embedding`` tables, positional tables, BN statistics
(``mean``/``var``), LoRA factors and anything else are pruned only when named by ``include``
(``docs/selection.md`` has the table of flax layers). A tree that does not use flax's names
(``{'w': ...}``, an SVM's ``(w, b)`` tuple) must say what to prune: ``include='w'``,
``include=matrices`` (every leaf with ``ndim >= 2``), ...

**Selectors** (the ``include=`` / ``exclude=`` of every function that takes them):

* a glob string matched against the whole path (``'*/Dense_0/*'``, ``'*/kernel'``, ``'pos'``);
* a compiled regular expression, searched in the path (``re.compile(r'Dense_[01]')``);
* a predicate ``(path, leaf) -> bool``, taken as it is;
* a list/tuple of selectors (a leaf is chosen if any of them chooses it).

**A pattern narrows, never widens.** A glob or regex in ``include`` either names a *leaf* or names a
*layer*:

* it names the leaf when it matches the leaf's path *because of the leaf's own key*: ``'*/kernel'``,
  ``'*/bias'``, ``'*/fc1/bias'``, ``'pos'``, ``re.compile('scale$')``. That leaf is selected, whatever
  it is;
* it names a layer when it matches a path prefix (``'fc1'``, ``'*/block'``), or matches the leaf's path
  whatever the leaf's key (``'fc1/*'``, ``'*/block/*'``, ``'*'``, ``re.compile('Dense_0')``). Only the
  layer's default leaves (:func:`kernels`) are selected: ``include='fc1/*'`` prunes ``fc1/kernel``,
  never ``fc1/bias``.

"Because of the leaf's own key" is tested by putting a neutral key in place of the leaf's: the
pattern names the leaf iff it matches ``fc1/bias`` but not ``fc1/_``. ``exclude`` and allocation
``overrides`` only ever narrow, so there a pattern plainly covers every leaf whose path or a prefix of
it matches. Every string or regex in ``include``/``exclude`` must match some leaf: a pattern that
matches nothing (a typo) is an error naming it.

>>> import numpy as np
>>> p = {'fc1': {'kernel': np.zeros((3, 4)), 'bias': np.zeros(4)}, 'pos': np.zeros((8, 4))}
>>> selected_paths(p), selected_paths(p, 'fc1/*'), selected_paths(p, ['*/bias', 'pos'])
(['fc1/kernel'], ['fc1/kernel'], ['fc1/bias', 'pos'])
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Callable, Optional, Sequence, Union

import jax
import numpy as np

from jaxprune.errors import PruningError

Predicate = Callable[[str, Any], bool]
Selector = Union[str, "re.Pattern[str]", Predicate, Sequence[Any], None]

__all__ = [
    "key_names",
    "Predicate",
    "Selector",
    "DEFAULT_SELECTION",
    "path_str",
    "flatten_with_paths",
    "leaf_paths",
    "map_with_path",
    "kernels",
    "matrices",
    "matches",
    "covers",
    "selected_paths",
    "check_same_structure",
]

DEFAULT_SELECTION = "leaves named 'kernel' with ndim >= 2 (flax Dense/Conv/Einsum/attention weights)"
"""One line saying what ``include=None`` selects, for error messages."""

# A key no real leaf is expected to carry; a pattern that still matches with it in place of the leaf's
# own key does not depend on that key, so it names the layer, not the leaf. A plain word character so
# that wildcards of every kind (glob `*`/`?`, regex `.`, `\w`, `[^/]`) match it.
_ANY_KEY = "_"


def _key_str(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def key_names(path: Sequence[Any]) -> tuple[str, ...]:
    """The names of a ``tree_flatten_with_path`` key path's entries, the way :func:`path_str` joins them.

    A trailing ``.value`` / ``.raw_value`` accessor is dropped: nnx.State wraps each leaf in a
    Variable whose array sits under it (linen's Partitioned too), so linen and nnx trees share names.
    The one key-path reader of the package (``neurons.tree.path_names`` builds on it).

    >>> import jax
    >>> (p, _), = jax.tree_util.tree_flatten_with_path({'params': {'w': [1.0]}})[0]
    >>> key_names(p)
    ('params', 'w', '0')
    """
    keys = list(path)
    if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name in ("value", "raw_value"):
        keys = keys[:-1]
    return tuple(_key_str(k) for k in keys)


def path_str(path: Sequence[Any]) -> str:
    """Formats a ``tree_flatten_with_path`` key path as ``'a/b/c'``.

    >>> import jax
    >>> (p, _), = jax.tree_util.tree_flatten_with_path({'params': {'w': 1.0}})[0]
    >>> path_str(p)
    'params/w'
    """
    return "/".join(key_names(path))


def flatten_with_paths(tree: Any) -> tuple[list[tuple[str, Any]], Any]:
    """``[(path string, leaf), ...]`` in ``jax.tree.leaves`` order and the treedef.

    Raises :class:`PruningError` naming both leaves when two leaves share a path string: selectors,
    overrides and global selection all name leaves by path, so such a tree cannot be pruned by name.

    >>> flatten_with_paths({'a': {'b': 1}})[0]
    [('a/b', 1)]
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    out = [(path_str(p), x) for p, x in flat]
    if len({p for p, _ in out}) != len(out):
        first: dict[str, Any] = {}
        for (p, _), (raw, _) in zip(out, flat):
            if p in first:
                raise PruningError(
                    f"two leaves have the same path '{p}': {jax.tree_util.keystr(first[p])} and "
                    f"{jax.tree_util.keystr(raw)}; rename one of the keys (a key containing '/' reads "
                    f"as two levels) so every leaf can be named")
            first[p] = raw
    return out, treedef


def leaf_paths(tree: Any) -> list[str]:
    """Path strings of all leaves, in ``jax.tree.leaves`` order (unique: duplicates raise).

    >>> leaf_paths({'b': 1, 'a': {'k': 2}})
    ['a/k', 'b']
    """
    return [p for p, _ in flatten_with_paths(tree)[0]]


def map_with_path(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """``jax.tree.map`` whose function also receives the leaf's path string first.

    >>> map_with_path(lambda p, x: p, {'a': 1})
    {'a': 'a'}
    """
    flatten_with_paths(tree)  # the duplicate-path check
    return jax.tree_util.tree_map_with_path(lambda p, *xs: fn(path_str(p), *xs), tree, *rest)


def kernels(path: str, leaf: Any) -> bool:
    """Default selector: leaves whose own key is ``kernel`` with ``ndim >= 2`` (see the module doc).

    >>> kernels('params/Dense_0/kernel', np.zeros((3, 4))), kernels('attn/query/bias', np.zeros((2, 4)))
    (True, False)
    """
    return path.rsplit("/", 1)[-1] == "kernel" and np.ndim(leaf) >= 2


def matrices(path: str, leaf: Any) -> bool:
    """Every leaf with ``ndim >= 2``, whatever its name: for trees without flax's names.

    Pass it as ``include=matrices`` for ``{'w': ...}`` dicts or tuples of arrays. On a flax model it
    would also select attention biases, embeddings and positional tables.

    >>> selected_paths({'w': np.zeros((3, 4)), 'b': np.zeros(4)}, include=matrices)
    ['w']
    """
    del path
    return np.ndim(leaf) >= 2


def _pattern_test(selector: Any) -> Optional[Callable[[str], bool]]:
    if isinstance(selector, str):
        return lambda s: fnmatch.fnmatchcase(s, selector)
    if isinstance(selector, re.Pattern):
        return lambda s: selector.search(s) is not None
    return None


def _hit(test: Callable[[str], bool], path: str) -> Optional[str]:
    """``'leaf'`` if the pattern names this leaf, ``'layer'`` if a layer holding it, else None."""
    keys = path.split("/")
    if test(path):
        return "layer" if test("/".join(keys[:-1] + [_ANY_KEY])) else "leaf"
    if any(test("/".join(keys[:j])) for j in range(1, len(keys))):
        return "layer"
    return None


def _parts(selector: Any) -> list[Any]:
    """The selectors of a (nested) list, flattened; a single selector as a list of one."""
    if not isinstance(selector, (list, tuple)):
        return [selector]
    return [s for item in selector for s in _parts(item)]


def _check_type(selector: Any, name: str) -> None:
    if isinstance(selector, (list, tuple)) and not _parts(selector):
        raise PruningError(f"{name}: an empty list of selectors selects nothing")
    for i, s in enumerate(_parts(selector)):
        if s is None or _pattern_test(s) is not None or callable(s):
            continue
        where = name if not isinstance(selector, (list, tuple)) else f"{name}[{i}]"
        raise PruningError(
            f"{where}: expected a glob string, a compiled regex, a predicate (path, leaf) -> bool, "
            f"None (the default) or a list of them, got {type(s).__name__} {s!r}")


def _include_one(selector: Any, path: str, leaf: Any) -> bool:
    if selector is None:
        return kernels(path, leaf)
    test = _pattern_test(selector)
    if test is None:
        return bool(selector(path, leaf))
    hit = _hit(test, path)
    return hit == "leaf" or (hit == "layer" and kernels(path, leaf))


def _covers_one(selector: Any, path: str, leaf: Any) -> bool:
    test = _pattern_test(selector)
    if test is None:
        return kernels(path, leaf) if selector is None else bool(selector(path, leaf))
    return _hit(test, path) is not None


def matches(selector: Selector, path: str, leaf: Any) -> bool:
    """Whether ``include=selector`` chooses the leaf at ``path`` (``None`` means :func:`kernels`).

    A pattern naming a layer chooses only the layer's kernels (the module docstring has the rule).
    ``None`` inside a list stands for the default: ``[None, 'pos']`` is the kernels and ``pos``.

    >>> matches('*/Dense_0/*', 'params/Dense_0/kernel', np.zeros((2, 2)))
    True
    >>> matches('*/Dense_0/*', 'params/Dense_0/bias', np.zeros(2)), matches('*/bias', 'd/bias', None)
    (False, True)
    """
    _check_type(selector, "include")
    return any(_include_one(s, path, leaf) for s in _parts(selector))


def covers(selector: Selector, path: str, leaf: Any = None) -> bool:
    """Whether a pattern matches ``path`` or one of its prefixes (a predicate: its own answer).

    This is how ``exclude`` and allocation ``overrides`` read patterns: they only narrow a selection,
    so a layer pattern covers all of the layer's leaves.

    >>> covers('*/Dense_0', 'params/Dense_0/bias'), covers('fc1/*', 'fc1/bias')
    (True, True)
    >>> covers('fc2', 'fc1/bias')
    False
    """
    _check_type(selector, "exclude")
    return any(_covers_one(s, path, leaf) for s in _parts(selector))


def _some(paths: list[str], n: int = 12) -> str:
    """A list of paths for an error message, shortened on big trees."""
    return str(paths) if len(paths) <= n else f"{paths[:n]} ... ({len(paths)} leaves in all)"


def _describe(selector: Any) -> str:
    return f"re.compile({selector.pattern!r})" if isinstance(selector, re.Pattern) else repr(selector)


def _no_leaf_message(include: Selector, exclude: Selector, paths: list[str]) -> str:
    what = f"include=None (the default: {DEFAULT_SELECTION})" if include is None else \
        f"include={include!r}"
    extra = f" exclude={exclude!r}" if exclude not in ((), [], None) else ""
    return (f"{what}{extra} selects no leaf; the tree's leaves are {_some(paths)}. Name the "
            f"leaves to prune with include=: a glob on their paths ('w', '*/weight', 'fc1/*' for "
            f"fc1's kernels), a regex, a predicate (path, leaf) -> bool, or jaxprune.paths.matrices "
            f"for every leaf with ndim >= 2")


def selected_paths(tree: Any, include: Selector = None, exclude: Selector = ()) -> list[str]:
    """Paths of the leaves chosen by ``include`` and not by ``exclude``; an empty result is an error.

    Args:
      tree: any pytree of arrays.
      include: selector of leaves to prune (default :func:`kernels`; a pattern naming a layer selects
        its kernels, a pattern naming a leaf selects that leaf — see the module docstring).
      exclude: selector of leaves to leave dense even if included (``()`` excludes nothing); a
        pattern covers every leaf under the paths it matches.

    Every glob or regex of ``include``/``exclude`` must match some leaf, and each of ``include``'s
    must select one: an error names the pattern that does not.

    >>> selected_paths({'w': np.zeros((2, 2)), 'b': np.zeros(2)}, 'w')
    ['w']
    >>> selected_paths({'d': {'kernel': np.zeros((2, 2)), 'bias': np.zeros(2)}}, 'd')
    ['d/kernel']
    """
    _check_type(include, "include")
    no_exclude = exclude is None or (isinstance(exclude, (list, tuple)) and not exclude)
    if not no_exclude:
        _check_type(exclude, "exclude")
    flat, _ = flatten_with_paths(tree)
    paths = [p for p, _ in flat]
    if include is not None:
        for i, s in enumerate(_parts(include)):
            test = _pattern_test(s)
            if test is None:
                continue
            name = "include" if not isinstance(include, (list, tuple)) else f"include[{i}]"
            hits = [(p, x) for p, x in flat if _hit(test, p) is not None]
            if not hits:
                raise PruningError(f"{name}={_describe(s)} matches no leaf; the tree's leaves are "
                                   f"{_some(paths)}")
            if not any(_include_one(s, p, x) for p, x in hits):
                raise PruningError(
                    f"{name}={_describe(s)} names layer(s) holding {_some([p for p, _ in hits])} "
                    f"but none of them is a kernel ({DEFAULT_SELECTION}); a pattern naming a "
                    f"layer selects only its kernels, so name the leaves themselves to prune them "
                    f"(e.g. {hits[0][0]!r})")
    if not no_exclude:
        for i, s in enumerate(_parts(exclude)):
            test = _pattern_test(s)
            if test is not None and not any(_hit(test, p) is not None for p in paths):
                name = "exclude" if not isinstance(exclude, (list, tuple)) else f"exclude[{i}]"
                raise PruningError(f"{name}={_describe(s)} matches no leaf; the tree's leaves are "
                                   f"{_some(paths)}")
    inc, exc = _parts(include), ([] if no_exclude else _parts(exclude))
    out = [p for p, x in flat if any(_include_one(s, p, x) for s in inc)
           and not any(_covers_one(s, p, x) for s in exc)]
    if not out:
        raise PruningError(_no_leaf_message(include, exclude, paths))
    return out


def check_same_structure(reference: Any, other: Any, name: str, ref_name: str = "params", *,
                         shapes: bool = True) -> None:
    """Raises a :class:`PruningError` naming the first differing leaf when two trees differ.

    Leaf shapes must match too unless ``shapes=False`` (for a tree of per-leaf scalars such as a
    sparsity tree); ``other`` leaves may be of any dtype.

    >>> check_same_structure({'w': np.zeros(2)}, {'w': np.ones(2)}, 'scores')
    >>> check_same_structure({'w': np.zeros(2)}, {'w': 0.5}, 'sparsities', shapes=False)
    """
    ref_flat, ref_def = flatten_with_paths(reference)
    oth_flat, oth_def = flatten_with_paths(other)
    ref_paths = [p for p, _ in ref_flat]
    oth_paths = [p for p, _ in oth_flat]
    if ref_paths != oth_paths:
        missing = [p for p in ref_paths if p not in oth_paths]
        extra = [p for p in oth_paths if p not in ref_paths]
        detail = "; ".join(x for x in (f"missing {missing[:3]}" if missing else "",
                                       f"unexpected {extra[:3]}" if extra else "") if x)
        raise PruningError(f"{name} does not have the structure of {ref_name}: "
                           f"{detail or 'leaves in a different order'}")
    if ref_def != oth_def:
        raise PruningError(f"{name} has the leaf paths of {ref_name} but a different tree type: "
                           f"{oth_def} vs {ref_def}")
    if shapes:
        for (path, a), (_, b) in zip(ref_flat, oth_flat):
            if np.shape(a) != np.shape(b):
                raise PruningError(
                    f"{name} leaf '{path}' has shape {np.shape(b)}, {ref_name} has {np.shape(a)}"
                )
