"""Sparsity structures: which groups of weights are kept or removed together.

A structure turns a leaf's element scores into *unit* scores (``units``) and a boolean keep-mask over
units back into an element mask (``expand``). Selection then removes exactly
``round_half_even(s * number_of_units)`` units, so for structured sparsity the exact count is in units:

* :class:`Unstructured` — a unit is one element.
* :class:`Block` — a unit is a block of ``shape`` over the trailing axes (scores pooled by mean or max).
* :class:`Neurons` / :class:`Channels` — a unit is one slice along ``axis`` (an output neuron of a
  Dense kernel ``(in, out)``, an output channel of a conv kernel ``(h, w, in, out)``); scores pooled
  over the other axes. The leaves whose units are the model's outputs (classes, vocabulary) are named
  by ``outputs=`` and keep every unit; no leaf ever loses more than ``units - min_keep`` units, so a
  leaf of ``u`` units at sparsity ``s`` loses exactly ``min(round_half_even(s * u), u - min_keep)``.
* :class:`NM` — keep the ``n`` best of every ``m`` consecutive elements along the leaf's *reduction*
  (input) axis (2:4 for sparse tensor cores). N:M fixes the sparsity at ``1 - n/m``: a leaf whose
  requested sparsity is 0 stays dense, any other value gets the N:M pattern. It is layerwise only.

See ``docs/structures.md`` for the rules and :mod:`jaxprune.wiring` for reading ``outputs`` and
reduction axes off a model.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

from jaxprune.errors import PruningError
from jaxprune.paths import Selector, matches

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
    "STRUCTURE_ARGS",
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

    Args:
      axis: the unit axis of each leaf.
      reduce: ``'mean'``, ``'max'`` or ``'sum'`` over the other axes.
      outputs: selector (glob, regex, predicate or list, see :mod:`jaxprune.paths`) of the leaves
        whose units are the model's outputs; they keep every unit. ``()`` says that no leaf is an
        output. ``None`` (default) means "not said": selecting units of any leaf then raises a
        :class:`PruningError` asking for it — a bare params tree cannot tell which layer holds the
        classes. :func:`jaxprune.wiring.output_kernels` reads them off the model.
      min_keep: units every leaf keeps whatever the sparsity (default 1: a layer is never emptied).

    >>> Neurons(outputs=()).units('w', jnp.ones((3, 4))).shape
    (4,)
    """

    axis: int = -1
    reduce: str = "mean"
    outputs: Selector = None
    min_keep: int = 1

    def check(self, path: str, shape: tuple[int, ...]) -> None:
        name = type(self).__name__
        _reducer(self.reduce, name)
        if isinstance(self.min_keep, bool) or not isinstance(self.min_keep, int) or self.min_keep < 0:
            raise PruningError(f"{name}: min_keep must be an integer >= 0, got {self.min_keep!r}")
        _axis(self.axis, max(len(shape), 1), path, name)
        if len(shape) == 0:
            raise PruningError(f"{name}: leaf '{path}' is a scalar; it has no units")

    def is_output(self, path: str, leaf: Any) -> bool:
        """Whether the leaf's units are model outputs (kept). Raises when ``outputs`` was not given.

        >>> Neurons(outputs='*/head/kernel').is_output('params/head/kernel', None)
        True
        """
        if self.outputs is None:
            raise PruningError(
                f"{type(self).__name__}: leaf '{path}' would lose units, but which leaves hold the "
                "model's outputs (its classes or vocabulary) was not said, and a params tree cannot "
                "tell. Pass outputs=jaxprune.wiring.output_kernels(fn, params, *example_args) "
                "(traced from the model), a selector such as outputs='*/head/kernel', or outputs=() "
                "if no pruned leaf is an output layer")
        if isinstance(self.outputs, (list, tuple)) and len(self.outputs) == 0:
            return False
        return matches(self.outputs, path, leaf)

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

    >>> Channels(outputs=()).units('k', jnp.ones((3, 3, 2, 8))).shape
    (8,)
    """


AxisSpec = Union[None, int, Mapping[str, int]]


class NM(NamedTuple):
    """Keep ``n`` of every ``m`` consecutive elements along the reduction axis (N:M, e.g. 2:4).

    The groups run along the leaf's reduction (input) axis, the layout of NVIDIA's 2:4 sparse tensor
    cores: for every output, each run of ``m`` consecutive input weights keeps ``n``. ``axis``:

    * ``None`` (default): inferred from the shape where a shape can tell — axis 0 of a 2-D Dense
      kernel ``(in, out)``, axis -2 of a 4-D conv kernel HWIO. Any other rank (a ``(in, heads,
      head_dim)`` attention kernel and a ``(width, in, out)`` 1-D conv look alike) raises a
      :class:`PruningError` naming the leaf.
    * an ``int``: that axis for every leaf (explicit override).
    * a mapping ``{path: axis}``, e.g. from :func:`jaxprune.wiring.reduction_axes`: the traced axis
      of each listed leaf; leaves not listed are inferred as for ``None``.

    Within a group, the lowest scores go first; ties go to the lower index.

    >>> NM(2, 4).mask('w', jnp.array([[4.0], [1.0], [3.0], [2.0]]), 0.5).ravel().tolist()
    [True, False, True, False]
    """

    n: int
    m: int
    axis: AxisSpec = None

    def axis_of(self, path: str, shape: tuple[int, ...]) -> int:
        """The (non-negative) axis of leaf ``path`` that the groups run along.

        >>> NM(2, 4).axis_of('conv/kernel', (3, 3, 8, 16))
        2
        """
        owner = f"NM({self.n}, {self.m})"
        ndim = len(shape)
        axis: Optional[int] = None
        if isinstance(self.axis, Mapping):
            axis = self.axis.get(path)
        elif self.axis is not None:
            axis = self.axis
        if axis is None:
            if ndim == 2:
                axis = 0
            elif ndim == 4:
                axis = 2
            else:
                raise PruningError(
                    f"{owner}: cannot tell the reduction (input) axis of leaf '{path}' of shape "
                    f"{shape} from its shape alone (only rank 2 (in, out) and rank 4 HWIO are "
                    "inferred). Pass NM(n, m, axis=...) or "
                    "axis=jaxprune.wiring.reduction_axes(fn, params, *example_args)")
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise PruningError(f"{owner}: axis for leaf '{path}' must be an integer, got {axis!r}")
        return _axis(axis, ndim, path, owner)

    def check(self, path: str, shape: tuple[int, ...]) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int) and 0 <= self.n <= self.m
                and self.m >= 1):
            raise PruningError(f"NM: need integers 0 <= n <= m, m >= 1; got n={self.n}, m={self.m}")
        if len(shape) == 0:
            raise PruningError(f"NM({self.n}, {self.m}): leaf '{path}' is a scalar")
        ax = self.axis_of(path, shape)
        if shape[ax] % self.m:
            raise PruningError(
                f"NM({self.n}, {self.m}): axis {ax} of leaf '{path}' has size {shape[ax]}, "
                f"not divisible by m={self.m}"
            )

    def mask(self, path: str, scores: jax.Array, sparsity: Any) -> jax.Array:
        """The N:M keep-mask of a leaf; all-True where ``sparsity`` is 0."""
        self.check(path, scores.shape)
        ax = self.axis_of(path, scores.shape)
        moved = jnp.moveaxis(scores, ax, -1)
        groups = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // self.m, self.m))
        a = groups[..., :, None]
        b = groups[..., None, :]
        idx = jnp.arange(self.m)
        earlier = jnp.broadcast_to(idx[None, :] < idx[:, None], a.shape[:-2] + (self.m, self.m))
        # rank of element i in its group: how many group members sort before it (ties by index).
        # Compared in the scores' own dtype, so int32 / float64 scores are ordered exactly.
        rank = jnp.sum((b < a) | ((b == a) & earlier), axis=-1)
        keep = rank >= self.m - self.n
        keep = jnp.moveaxis(keep.reshape(moved.shape), -1, ax)
        return jnp.where(jnp.asarray(sparsity) > 0, keep, True)


Structure = Any  # Unstructured | Block | Neurons | Channels | NM, or any object with the same methods

STRUCTURES: dict[str, Callable[..., Structure]] = {}
#: ``name -> (parse_arg, spelling)``: how the text after ``name:`` in a config string (``'nm:2:4'``)
#: becomes the factory's keyword arguments, and how the string is spelled in error messages.
STRUCTURE_ARGS: dict[str, tuple[Callable[[str], dict[str, Any]], str]] = {}


def register_structure(name: str, factory: Callable[..., Structure], *,
                       parse_arg: Optional[Callable[[str], dict[str, Any]]] = None,
                       spelling: Optional[str] = None) -> Callable[..., Structure]:
    """Adds a structure factory to the registry, reachable from configs as ``structure=name``.

    ``parse_arg`` (optional) turns the text after ``name:`` (``''`` when there is none) into the
    factory's keyword arguments, raising ``ValueError`` for a bad one; without it the config string
    is the bare name. ``spelling`` is how error messages show the string (default ``name``).

    >>> _ = register_structure('unstructured', Unstructured)
    """
    STRUCTURES[name] = factory
    if parse_arg is None:
        STRUCTURE_ARGS.pop(name, None)
    else:
        STRUCTURE_ARGS[name] = (parse_arg, spelling or f"{name}:ARG")
    return factory


def get_structure(name: str, **kwargs: Any) -> Structure:
    """A structure by registry name: ``get_structure('nm', n=2, m=4)``.

    >>> get_structure('neurons', outputs=())
    Neurons(axis=-1, reduce='mean', outputs=(), min_keep=1)
    """
    if name not in STRUCTURES:
        raise PruningError(f"structure: unknown name {name!r}; known: {sorted(STRUCTURES)}")
    return STRUCTURES[name](**kwargs)


def _nm_arg(arg: str) -> dict[str, Any]:
    n, m = (int(v) for v in arg.split(":"))  # exactly two integers, else ValueError
    return {"n": n, "m": m}


def _block_arg(arg: str) -> dict[str, Any]:
    return {"shape": tuple(int(v) for v in arg.split("x"))}


for _name, _factory in [("unstructured", Unstructured), ("neurons", Neurons), ("channels", Channels)]:
    register_structure(_name, _factory)
register_structure("nm", NM, parse_arg=_nm_arg, spelling="nm:N:M")
register_structure("block", Block, parse_arg=_block_arg, spelling="block:AxB")


def num_units(structure: Structure, path: str, shape: tuple[int, ...]) -> int:
    """Number of units a leaf of ``shape`` has under ``structure`` (for exact counts)."""
    structure.check(path, shape)
    return int(math.prod(jax.eval_shape(lambda: structure.units(path, jnp.zeros(shape))).shape))
