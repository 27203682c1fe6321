"""Sparsity structures: which groups of weights are kept or removed together.

A structure turns a leaf's element scores into *unit* scores (``units``) and a boolean keep-mask over
units back into an element mask (``expand``). Selection then removes exactly
``round_half_even(s * number_of_units)`` units, so for structured sparsity the exact count is in units:

* :class:`Unstructured` — a unit is one element.
* :class:`Block` — a unit is a block of ``shape`` over the trailing axes (scores pooled by mean or max).
* :class:`Neurons` / :class:`Channels` — a unit is one slice along ``axis`` (an output neuron of a
  Dense kernel ``(in, out)``, an output channel of a conv kernel ``(h, w, in, out)``); scores pooled
  over the other axes.
* :class:`NM` — keep the ``n`` best of every ``m`` consecutive elements along ``axis`` (2:4 for sparse
  tensor cores). N:M fixes the sparsity at ``1 - n/m``: a leaf whose requested sparsity is 0 stays
  dense, any other value gets the N:M pattern. It is layerwise only.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxprune.errors import PruningError

__all__ = [
    "Unstructured",
    "Block",
    "Neurons",
    "Channels",
    "NM",
    "Structure",
    "register_structure",
    "get_structure",
    "STRUCTURES",
]

_REDUCERS = {"mean": jnp.mean, "max": jnp.max, "sum": jnp.sum}


def _reducer(name: str, owner: str) -> Callable[..., jax.Array]:
    if name not in _REDUCERS:
        raise PruningError(f"{owner}: reduce must be one of {sorted(_REDUCERS)}, got {name!r}")
    return _REDUCERS[name]


def _axis(axis: int, ndim: int, path: str, owner: str) -> int:
    if not -ndim <= axis < ndim:
        raise PruningError(f"{owner}: axis {axis} does not exist in leaf '{path}' of rank {ndim}")
    return axis % ndim


class Unstructured(NamedTuple):
    """Element-wise sparsity: each weight is its own unit.

    >>> Unstructured().units('w', jnp.ones((2, 3))).shape
    (2, 3)
    """

    def check(self, path: str, shape: tuple[int, ...]) -> None:
        del path, shape

    def units(self, path: str, scores: jax.Array) -> jax.Array:
        del path
        return scores

    def expand(self, path: str, shape: tuple[int, ...], keep: jax.Array) -> jax.Array:
        del path, shape
        return keep


class Block(NamedTuple):
    """Blocks of ``shape`` over the trailing axes of a leaf are kept or removed together.

    A 2-D ``shape`` on a conv kernel ``(h, w, in, out)`` blocks the ``(in, out)`` axes. Every blocked
    axis must be divisible by its block size.

    >>> Block((2, 2)).units('w', jnp.arange(16.0).reshape(4, 4)).shape
    (2, 2)
    """

    shape: tuple[int, ...]
    reduce: str = "mean"

    def check(self, path: str, shape: tuple[int, ...]) -> None:
        _reducer(self.reduce, "Block")
        if not self.shape or any(int(b) < 1 for b in self.shape):
            raise PruningError(f"Block: shape must be positive integers, got {self.shape}")
        if len(self.shape) > len(shape):
            raise PruningError(
                f"Block{tuple(self.shape)} has more axes than leaf '{path}' of shape {shape}"
            )
        for dim, b in zip(shape[len(shape) - len(self.shape):], self.shape):
            if dim % b:
                raise PruningError(
                    f"Block{tuple(self.shape)} does not tile leaf '{path}' of shape {shape}: "
                    f"axis of size {dim} is not divisible by {b}"
                )

    def _full(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (1,) * (len(shape) - len(self.shape)) + tuple(int(b) for b in self.shape)

    def units(self, path: str, scores: jax.Array) -> jax.Array:
        self.check(path, scores.shape)
        full = self._full(scores.shape)
        split = []
        for dim, b in zip(scores.shape, full):
            split += [dim // b, b]
        pooled = _reducer(self.reduce, "Block")(
            scores.reshape(split), axis=tuple(range(1, 2 * len(full), 2))
        )
        return pooled

    def expand(self, path: str, shape: tuple[int, ...], keep: jax.Array) -> jax.Array:
        del path
        out = keep
        for axis, b in enumerate(self._full(shape)):
            out = jnp.repeat(out, b, axis=axis) if b > 1 else out
        return out


class Neurons(NamedTuple):
    """Whole output units along ``axis`` (default last: the ``out`` axis of a Dense kernel).

    Unit scores pool the element scores over all other axes (``reduce='mean'`` by default so layers of
    different fan-in compare fairly in global selection).

    >>> Neurons().units('w', jnp.ones((3, 4))).shape
    (4,)
    """

    axis: int = -1
    reduce: str = "mean"

    def check(self, path: str, shape: tuple[int, ...]) -> None:
        _reducer(self.reduce, type(self).__name__)
        _axis(self.axis, max(len(shape), 1), path, type(self).__name__)
        if len(shape) == 0:
            raise PruningError(f"{type(self).__name__}: leaf '{path}' is a scalar; it has no units")

    def units(self, path: str, scores: jax.Array) -> jax.Array:
        self.check(path, scores.shape)
        ax = self.axis % scores.ndim
        others = tuple(i for i in range(scores.ndim) if i != ax)
        return _reducer(self.reduce, "Neurons")(scores, axis=others) if others else scores

    def expand(self, path: str, shape: tuple[int, ...], keep: jax.Array) -> jax.Array:
        del path
        ax = self.axis % len(shape)
        bshape = [1] * len(shape)
        bshape[ax] = shape[ax]
        return jnp.broadcast_to(keep.reshape(bshape), shape)


class Channels(Neurons):
    """Whole conv output channels: :class:`Neurons` on the last axis of an HWIO kernel.

    >>> Channels().units('k', jnp.ones((3, 3, 2, 8))).shape
    (8,)
    """


class NM(NamedTuple):
    """Keep ``n`` of every ``m`` consecutive elements along ``axis`` (N:M sparsity, e.g. 2:4).

    Within a group, the lowest scores go first; ties go to the lower index.

    >>> NM(2, 4).mask('w', jnp.array([[4.0, 1.0, 3.0, 2.0]]), 0.5).tolist()
    [[True, False, True, False]]
    """

    n: int
    m: int
    axis: int = -1

    def check(self, path: str, shape: tuple[int, ...]) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int) and 0 <= self.n <= self.m
                and self.m >= 1):
            raise PruningError(f"NM: need integers 0 <= n <= m, m >= 1; got n={self.n}, m={self.m}")
        if len(shape) == 0:
            raise PruningError(f"NM({self.n}, {self.m}): leaf '{path}' is a scalar")
        ax = _axis(self.axis, len(shape), path, f"NM({self.n}, {self.m})")
        if shape[ax] % self.m:
            raise PruningError(
                f"NM({self.n}, {self.m}): axis {self.axis} of leaf '{path}' has size {shape[ax]}, "
                f"not divisible by m={self.m}"
            )

    def mask(self, path: str, scores: jax.Array, sparsity: Any) -> jax.Array:
        """The N:M keep-mask of a leaf; all-True where ``sparsity`` is 0."""
        self.check(path, scores.shape)
        ax = self.axis % scores.ndim
        moved = jnp.moveaxis(scores, ax, -1)
        groups = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // self.m, self.m))
        a = groups[..., :, None]
        b = groups[..., None, :]
        idx = jnp.arange(self.m)
        earlier = jnp.broadcast_to(idx[None, :] < idx[:, None], a.shape[:-2] + (self.m, self.m))
        # rank of element i in its group: how many group members sort before it (ties by index).
        rank = jnp.sum((b < a) | ((b == a) & earlier), axis=-1)
        keep = rank >= self.m - self.n
        keep = jnp.moveaxis(keep.reshape(moved.shape), -1, ax)
        return jnp.where(jnp.asarray(sparsity) > 0, keep, True)


Structure = Any  # Unstructured | Block | Neurons | Channels | NM, or any object with the same methods

STRUCTURES: dict[str, Callable[..., Structure]] = {}


def register_structure(name: str, factory: Callable[..., Structure]) -> Callable[..., Structure]:
    """Adds a structure factory to the registry checked by the registry-wide tests.

    >>> _ = register_structure('unstructured', Unstructured)
    """
    STRUCTURES[name] = factory
    return factory


def get_structure(name: str, **kwargs: Any) -> Structure:
    """A structure by registry name: ``get_structure('nm', n=2, m=4)``.

    >>> get_structure('neurons')
    Neurons(axis=-1, reduce='mean')
    """
    if name not in STRUCTURES:
        raise PruningError(f"structure: unknown name {name!r}; known: {sorted(STRUCTURES)}")
    return STRUCTURES[name](**kwargs)


for _name, _factory in [("unstructured", Unstructured), ("block", Block), ("neurons", Neurons),
                        ("channels", Channels), ("nm", NM)]:
    register_structure(_name, _factory)


def num_units(structure: Structure, path: str, shape: tuple[int, ...]) -> int:
    """Number of units a leaf of ``shape`` has under ``structure`` (for exact counts)."""
    structure.check(path, shape)
    return int(math.prod(jax.eval_shape(lambda: structure.units(path, jnp.zeros(shape))).shape))
