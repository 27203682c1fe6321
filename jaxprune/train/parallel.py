"""Data-parallel (and optionally model-parallel) training with JAX's own SPMD: a ``Mesh`` and
``NamedSharding`` s, compiled by ``jax.jit`` (GSPMD). No ``pmap``, no hand-written collectives.

A mesh spec is a string ``'axis:size[,axis:size]'`` over the axes ``data`` and ``model``:

* ``'data:4'``: 4 devices; each batch is split along its first axis over ``data``; params, masks and
  optimizer state are **replicated**. XLA inserts the gradient all-reduce.
* ``'data:2,model:2'``: as above over ``data``, and every array leaf of rank >= 2 whose **last**
  (output) dimension divides by the ``model`` size is split along that dimension over ``model`` —
  params, masks and optimizer moments alike, since the rule looks only at a leaf's shape. Everything
  else (biases, scalars, PRNG keys, odd-sized kernels) is replicated.
* ``''``: no mesh; JAX's default device.

The pruning transformation needs no change: its masks live in the optimizer state, so they follow the
same rule, and global selection over sharded leaves gives exactly the single-device masks.

>>> parse_mesh('data:4, model:2')
MeshSpec(axes=(('data', 4), ('model', 2)))
>>> parse_mesh('').axes
()
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxprune.errors import ConfigError

__all__ = ["AXES", "MeshSpec", "parse_mesh", "make_mesh", "check_batch_size", "leaf_spec",
           "state_shardings", "shard_state", "batch_sharding", "shard_batch", "MAX_STEPS_AHEAD",
           "steps_ahead"]

AXES = ("data", "model")
"""The mesh axes jaxprune knows: ``data`` splits batches, ``model`` splits kernels' output dim."""


class MeshSpec(NamedTuple):
    """A parsed mesh spec: ``axes`` is a tuple of ``(name, size)`` in the order written."""

    axes: tuple[tuple[str, int], ...]

    @property
    def size(self) -> int:
        """Number of devices the mesh needs (1 for an empty spec)."""
        return int(np.prod([n for _, n in self.axes], dtype=np.int64)) if self.axes else 1

    def axis_size(self, name: str) -> int:
        """Size of axis ``name`` (1 when absent)."""
        return dict(self.axes).get(name, 1)


def parse_mesh(spec: str, *, field: str = "mesh") -> MeshSpec:
    """Parses ``'data:4'`` / ``'data:2,model:2'`` / ``''``; errors name the config ``field``.

    >>> parse_mesh('data:2').size
    2
    >>> parse_mesh('pipe:2')
    Traceback (most recent call last):
    ...
    jaxprune.errors.ConfigError: config field 'mesh'='pipe:2': unknown axis 'pipe'; known axes: data, model
    """
    if spec is None:
        spec = ""
    if not isinstance(spec, str):
        raise ConfigError(f"config field {field!r} must be a string like 'data:4', got {spec!r}")
    axes: list[tuple[str, int]] = []
    for part in [p.strip() for p in spec.split(",")] if spec.strip() else []:
        name, sep, size = part.partition(":")
        name = name.strip()
        where = f"config field {field!r}={spec!r}"
        if not sep:
            raise ConfigError(f"{where}: {part!r} is not of the form axis:size (e.g. 'data:4')")
        if name not in AXES:
            raise ConfigError(f"{where}: unknown axis {name!r}; known axes: {', '.join(AXES)}")
        if name in dict(axes):
            raise ConfigError(f"{where}: axis {name!r} appears twice")
        try:
            n = int(size.strip())
        except ValueError:
            raise ConfigError(f"{where}: size of axis {name!r} must be an integer >= 1, got "
                              f"{size.strip()!r}") from None
        if n < 1:
            raise ConfigError(f"{where}: size of axis {name!r} must be an integer >= 1, got {n}")
        axes.append((name, n))
    return MeshSpec(tuple(axes))


def make_mesh(spec: str | MeshSpec, devices: Optional[Sequence[Any]] = None, *,
              field: str = "mesh") -> Optional[Mesh]:
    """A :class:`jax.sharding.Mesh` over the first ``spec.size`` devices, or ``None`` for ``''``.

    Raises :class:`~jaxprune.errors.ConfigError` naming ``field`` when there are too few devices.

    >>> make_mesh('') is None
    True
    >>> dict(make_mesh('data:1').shape)
    {'data': 1}
    """
    parsed = spec if isinstance(spec, MeshSpec) else parse_mesh(spec, field=field)
    if not parsed.axes:
        return None
    devices = list(jax.devices() if devices is None else devices)
    if parsed.size > len(devices):
        hint = ""
        if devices and devices[0].platform == "cpu":
            hint = (f"; on CPU start Python with XLA_FLAGS=--xla_force_host_platform_device_count="
                    f"{parsed.size} to simulate {parsed.size} devices")
        raise ConfigError(f"config field {field!r}={_spec_str(parsed)!r} needs {parsed.size} devices, "
                          f"only {len(devices)} available ({devices[0].platform if devices else 'none'})"
                          f"{hint}")
    grid = np.array(devices[: parsed.size], dtype=object).reshape([n for _, n in parsed.axes])
    names = tuple(name for name, _ in parsed.axes)
    return Mesh(grid, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def _spec_str(spec: MeshSpec) -> str:
    return ",".join(f"{a}:{n}" for a, n in spec.axes)


def _axis_size(mesh: Mesh, name: str) -> int:
    return int(mesh.shape[name]) if name in mesh.axis_names else 1


MAX_STEPS_AHEAD = 8
"""How many train steps :func:`~jaxprune.train.fit` lets the host dispatch ahead of a multi-device CPU
mesh. XLA:CPU lets at most 32 computations per device be in flight; a host 32 or more collective
steps ahead deadlocks in the all-reduce rendezvous (docs/scale.md, "Why the host waits"). 8 keeps the
host a few steps ahead, which is all the overlap a CPU backend has to gain."""


def steps_ahead(mesh: Optional[Mesh]) -> Optional[int]:
    """The bound on steps dispatched ahead of ``mesh``'s devices: :data:`MAX_STEPS_AHEAD` for a CPU mesh
    of two or more devices, ``None`` (no bound) for accelerators, one device or no mesh.

    On XLA:CPU each device of a ``--xla_force_host_platform_device_count`` mesh admits 32 in-flight
    computations and its launches run on a small shared thread pool. A host that dispatches train steps
    faster than the devices finish them (any step heavier than the Python loop around it) fills one
    device's 32 slots first: that device's next launch waits for a slot while the other devices' parts of
    the same step hold the pool waiting for it in the all-reduce, and XLA aborts the process after 40 s
    ("Expected 4 threads to join the rendezvous, but only 3 of them arrived", exit 134).

    >>> steps_ahead(None) is None, steps_ahead(make_mesh('data:1')) is None
    (True, True)
    """
    if mesh is None or mesh.devices.size < 2:
        return None
    platforms = {d.platform for d in mesh.devices.flat}
    return MAX_STEPS_AHEAD if platforms == {"cpu"} else None


def check_batch_size(mesh: Optional[Mesh], batch_size: int, *, field: str = "batch_size") -> None:
    """Raises :class:`~jaxprune.errors.ConfigError` unless ``batch_size`` divides by the ``data`` axis.

    >>> check_batch_size(make_mesh('data:1'), 32)
    """
    n = 1 if mesh is None else _axis_size(mesh, "data")
    if batch_size % n:
        raise ConfigError(f"config field {field!r}={batch_size} must be divisible by the mesh's "
                          f"'data' axis size {n} (config field 'mesh')")


def leaf_spec(mesh: Mesh, shape: Sequence[int]) -> PartitionSpec:
    """The sharding rule of a state leaf: split the last dim over ``model`` when it is a rank >= 2
    array whose last dim divides by the ``model`` size; replicate otherwise.

    >>> leaf_spec(make_mesh('data:1'), (784, 300)) == PartitionSpec()
    True
    """
    m = _axis_size(mesh, "model")
    if m > 1 and len(shape) >= 2 and shape[-1] % m == 0:
        return PartitionSpec(*([None] * (len(shape) - 1)), "model")
    return PartitionSpec()


def state_shardings(mesh: Mesh, tree: Any) -> Any:
    """A tree of :class:`NamedSharding` (one per leaf of ``tree``) following :func:`leaf_spec`."""
    return jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(mesh, np.shape(x))), tree)


def shard_state(mesh: Mesh, tree: Any) -> Any:
    """Places every leaf of ``tree`` (params, masks, optimizer state, ...) on ``mesh`` by the rule.

    Every process must hold the same values (true for seeded initialisation).
    """
    return jax.device_put(tree, state_shardings(mesh, tree))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Split the first (batch) axis over ``data`` (replicated when the mesh has no ``data`` axis)."""
    first = "data" if "data" in mesh.axis_names else None
    return NamedSharding(mesh, PartitionSpec(first, *([None] * (ndim - 1))))


def shard_batch(mesh: Mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    """Global batch arrays sharded along ``data``. Each process passes the *same* global batch (the
    batch order is deterministic from ``(seed, epoch)``) and transfers only its own devices' slices,
    so this works unchanged on several hosts.
    """
    out = []
    for a in arrays:
        a = np.asarray(a)
        out.append(jax.make_array_from_callback(a.shape, batch_sharding(mesh, a.ndim),
                                                lambda index, a=a: a[index]))
    return tuple(out)
