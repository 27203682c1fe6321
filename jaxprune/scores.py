"""Importance scores: pure functions ``params -> scores`` (same tree, higher = more important = kept).

Each scorer is registered under a name; :func:`compute_scores` calls any of them with one signature
``(params, *, grads=None, key=None)`` and checks that what it needs was given. A new criterion is one
function and one :func:`register_scorer` line; the registry-wide tests then check it automatically.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from jaxprune.errors import PruningError
from jaxprune.paths import check_same_structure

__all__ = [
    "magnitude_scores",
    "random_scores",
    "saliency_scores",
    "movement_scores",
    "taylor_scores",
    "Scorer",
    "SCORERS",
    "register_scorer",
    "get_scorer",
    "compute_scores",
]


def _with_grads(params: Any, grads: Any, name: str, fn: Callable[[Any, Any], Any]) -> Any:
    if grads is None:
        raise PruningError(f"{name} needs gradients: pass grads= (a tree like params)")
    check_same_structure(params, grads, "grads")
    return jax.tree.map(fn, params, grads)


def magnitude_scores(params: Any) -> Any:
    """|w| (Han et al. 2015). The classic criterion: small weights matter least.

    >>> magnitude_scores({'w': jnp.array([-2.0, 1.0])})['w'].tolist()
    [2.0, 1.0]
    """
    return jax.tree.map(jnp.abs, params)


def random_scores(key: jax.Array, params: Any) -> Any:
    """Uniform random scores in [0, 1): the random-pruning baseline. One independent key per leaf.

    >>> s = random_scores(jax.random.PRNGKey(0), {'w': jnp.zeros((2, 2))})
    >>> s['w'].shape
    (2, 2)
    """
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    out = [jax.random.uniform(k, jnp.shape(x), jnp.float32) for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, out)


def saliency_scores(params: Any, grads: Any) -> Any:
    """|w·g|: connection sensitivity (SNIP, Lee et al. 2019; ShrinkBench's "gradient magnitude").

    >>> saliency_scores({'w': jnp.array([2.0, -1.0])}, {'w': jnp.array([0.5, 3.0])})['w'].tolist()
    [1.0, 3.0]
    """
    return _with_grads(params, grads, "saliency_scores", lambda w, g: jnp.abs(w * g))


def movement_scores(params: Any, grads: Any) -> Any:
    """-w·g: movement pruning (Sanh et al. 2020); weights moving away from zero score high.

    Summed over steps (pass accumulated ``-w·g``) it is the paper's cumulative score; one step of
    gradients gives its first-order version.

    >>> movement_scores({'w': jnp.array([2.0, -1.0])}, {'w': jnp.array([0.5, 3.0])})['w'].tolist()
    [-1.0, 3.0]
    """
    return _with_grads(params, grads, "movement_scores", lambda w, g: -w * g)


def taylor_scores(params: Any, grads: Any) -> Any:
    """(w·g)²: first-order Taylor estimate of the loss change (Molchanov et al. 2019).

    >>> taylor_scores({'w': jnp.array([2.0, -1.0])}, {'w': jnp.array([0.5, 3.0])})['w'].tolist()
    [1.0, 9.0]
    """
    return _with_grads(params, grads, "taylor_scores", lambda w, g: jnp.square(w * g))


class Scorer(NamedTuple):
    """A registered scorer: ``fn(params, *, grads, key) -> scores`` and what it needs."""

    name: str
    fn: Callable[..., Any]
    needs_grads: bool = False
    needs_key: bool = False


SCORERS: dict[str, Scorer] = {}


def register_scorer(
    name: str, fn: Callable[..., Any], *, needs_grads: bool = False, needs_key: bool = False
) -> Scorer:
    """Registers ``fn(params, *, grads=None, key=None) -> scores`` under ``name``.

    >>> _ = register_scorer('neg_magnitude', lambda p, **_: jax.tree.map(lambda w: -jnp.abs(w), p))
    >>> del SCORERS['neg_magnitude']
    """
    if not callable(fn):
        raise PruningError(f"register_scorer: fn for {name!r} is not callable")
    scorer = Scorer(name, fn, needs_grads, needs_key)
    SCORERS[name] = scorer
    return scorer


def get_scorer(name: str) -> Scorer:
    """The registered :class:`Scorer` called ``name``; unknown names list the known ones.

    >>> get_scorer('magnitude').needs_grads
    False
    """
    if name not in SCORERS:
        raise PruningError(f"scorer: unknown name {name!r}; known: {sorted(SCORERS)}")
    return SCORERS[name]


def compute_scores(
    name: str, params: Any, *, grads: Optional[Any] = None, key: Optional[jax.Array] = None
) -> Any:
    """Scores from the scorer ``name``, checking that gradients / a key were given when needed.

    >>> compute_scores('magnitude', {'w': jnp.array([-3.0])})['w'].tolist()
    [3.0]
    """
    scorer = get_scorer(name)
    if scorer.needs_grads and grads is None:
        raise PruningError(f"scorer {name!r} needs gradients: pass grads=")
    if scorer.needs_key and key is None:
        raise PruningError(f"scorer {name!r} needs a PRNG key: pass key=")
    return scorer.fn(params, grads=grads, key=key)


register_scorer("magnitude", lambda p, grads=None, key=None: magnitude_scores(p))
register_scorer("random", lambda p, grads=None, key=None: random_scores(key, p), needs_key=True)
register_scorer("saliency", lambda p, grads=None, key=None: saliency_scores(p, grads),
                needs_grads=True)
register_scorer("movement", lambda p, grads=None, key=None: movement_scores(p, grads),
                needs_grads=True)
register_scorer("taylor", lambda p, grads=None, key=None: taylor_scores(p, grads), needs_grads=True)
