"""Both of the kit's CPU lowerings at once: :func:`fast_lowerings`."""

from __future__ import annotations

import contextlib
from typing import Iterator

from jaxprune.shrink.fastattn import fast_attention
from jaxprune.shrink.fastconv import fast_convs

__all__ = ["fast_lowerings"]


@contextlib.contextmanager
def fast_lowerings() -> Iterator[None]:
    """``fast_convs()`` and ``fast_attention()`` together: every linen ``Conv`` and
    ``MultiHeadDotProductAttention`` traced inside uses the kit's CPU lowerings (same outputs within
    float rounding, ``docs/shrink.md``).

    >>> import jax, jax.numpy as jnp
    >>> from jaxprune.models import SmallCNN, init_params
    >>> m = SmallCNN(10, channels=(4, 8), hidden=16)
    >>> v = init_params(m, jax.random.PRNGKey(0), (1, 28, 28, 1))
    >>> with fast_lowerings():
    ...     jaxpr = str(jax.make_jaxpr(m.apply)(v, jnp.ones((2, 28, 28, 1))))
    >>> jaxpr.count('conv_general_dilated')  # 1->4 and 4->8 both computed as shifted products
    0
    """
    with fast_convs(), fast_attention():
        yield
