"""Runs that differ only in ``seed`` and target ``sparsity``, trained as one group.

A sweep over seeds x sparsities repeats one small program many times, and ``fit`` pays for it twice:
every ``fit`` call compiles its step again, and every step is one Python dispatch. A *group* is
trained by one jitted program that runs ``chunk`` steps per call in a ``lax.scan`` (compiled once for
the whole group, one dispatch per chunk), with each run's own batch order
(``jaxprune.data.batches(..., seed=run's seed, epoch=e)``), initialisation
(:func:`jaxprune.experiment.make_run`), optimizer state and masks. Two strategies:

* ``strategy='vmap'``: the runs are stacked on a leading axis and every step is ``jax.vmap`` of
  :func:`jaxprune.train.make_train_step`: one program trains all R runs at once (on a CPU backend,
  slices of two runs, ``os.cpu_count()`` slices at a time in threads: measured faster there).
* ``strategy='scan'`` (default): the same scanned program without ``vmap``, each run on its own,
  ``os.cpu_count()`` runs at a time in threads (one small run does not keep every core busy).

No method is written here: each run executes the sequential method itself, in its own thread
(:func:`jaxprune.harness.run_in_group`), and only its ``run.trainer.fit`` calls meet the group's in
a :class:`jaxprune.harness.GroupTrainer`, which trains them with one :func:`fit_group`. Pruning,
evaluation and the result fields are per run and not batched (they are cheap; the training is what
costs). The group trains with the first run's update rule, so :data:`SUPPORTED_METHODS` admits only
methods whose runs differ in optimizer *state* (masks), never in the transformation itself.

Grouping rule (:func:`vmap_groups`): same config except ``seed``, ``sparsity`` and ``progress``;
``kind='nn'``; method in :data:`SUPPORTED_METHODS`; a model registered ``groupable``
(:func:`jaxprune.models.groupable_models`); no neuron/channel structure, ``precision='f32'``,
``quantize='none'``, no mesh, no checkpoints. Every other config runs alone through
:func:`jaxprune.experiment.train_and_evaluate`.

Equality with the same runs done one by one (XLA:CPU, jax 0.10.2; measurements in docs/vmapped.md):

* ``'scan'`` is bit-identical to ``fit`` for the groupable MLPs of the zoo (the whole result
  dict, ``fit_sha256`` included; checked over a full Fashion-MNIST epoch), and the faster of the two
  on a 2-core CPU.
* ``'vmap'`` is not. The matmuls are bit-identical under ``vmap``, but XLA picks a reduction kernel by
  tensor size (YNNPACK from 4096 elements), so a bias gradient summed over ``[R, 32, 100]`` rounds
  differently from the same sum over ``[32, 100]``. The last-bit difference stays ~1e-6 for a few
  hundred steps, then it is amplified and the runs diverge: after one Fashion-MNIST epoch
  (1875 steps) weights differ by ~0.2 and thousands of mask entries flip. Use it where its throughput
  matters (accelerators) and results need to be statistically, not bitwise, the same.

Conv models are not grouped: there even the scanned step rounds differently from ``fit``'s
(measured on ``small_cnn``), and the runs diverge like ``'vmap'``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

from jaxprune import experiment
from jaxprune.errors import ConfigError
from jaxprune.harness import (SCHEMA_VERSION, GroupTrainer, check_workdir, make_run, plain_result,
                              run_in_group, validate_config, with_precision, write_result)
from jaxprune.models import MODELS, groupable_models
from jaxprune.train.group import STRATEGIES, fit_group
from jaxprune.train.context import run_context

__all__ = ["SUPPORTED_METHODS", "STRATEGIES", "vmap_groups", "run_group", "fit_group"]

SUPPORTED_METHODS = ("none", "one_shot", "global_one_shot", "static_sparse")
"""Methods a group can train (their masks are fixed during training, so one update rule fits all)."""

_VARYING = ("seed", "sparsity", "progress")
# Fields whose other values change what a run does in ways a group does not replicate.
_REQUIRED = {"kind": ("nn",), "precision": ("f32",), "quantize": ("none",), "qat_epochs": (0,),
             "mesh": ("", None), "checkpoint_every": (0, None)}
_STRUCTURED = ("neurons", "channels", "heads")


def _config_dict(config: Any, index: int) -> dict:
    if not (hasattr(config, "to_dict") and hasattr(config, "get")):
        raise ConfigError(f"configs[{index}] must be an ml_collections ConfigDict, "
                          f"got {type(config).__name__}")
    return config.to_dict()


def _freeze(value: Any) -> Any:
    """A hashable stand-in for a config value (dicts and sequences become tuples)."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_freeze(v) for v in value))
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return (type(value).__name__, value)


def _unsupported(config: Any) -> str | None:
    """Why ``config`` cannot be trained in a group (the field and its value), or ``None``."""
    for key, allowed in _REQUIRED.items():
        default = allowed[0]
        if config.get(key, default) not in allowed:
            return f"{key}={config.get(key)!r}"
    if config.get("method") not in SUPPORTED_METHODS:
        return f"method={config.get('method')!r}"
    name = config.get("model")
    entry = MODELS.get(name) if isinstance(name, str) else None
    if entry is None or not entry.groupable:  # registered groupable: checked against one-by-one runs
        return f"model={config.get('model')!r}"
    if config.get("structure") in _STRUCTURED:
        return f"structure={config.get('structure')!r}"
    try:
        validate_config(config)
    except (ValueError, TypeError, KeyError, AttributeError) as err:  # the one-by-one run reports it
        return f"invalid config ({err})"
    return None


def vmap_groups(configs: Sequence[Any]) -> list[list[int]]:
    """Partitions config indices into groups that :func:`run_group` can train together.

    Two configs share a group when they are equal except for ``seed``, ``sparsity`` and ``progress``
    and both are supported (``kind='nn'``, a method in :data:`SUPPORTED_METHODS`, a groupable model,
    f32, no quantization, no neuron/channel structure, no mesh, no checkpoints). Unsupported configs are singletons. Groups are ordered by their first index;
    indices keep their order within a group.

    Example:
        >>> import ml_collections
        >>> base = dict(kind='nn', method='one_shot', learning_rate=1e-3, seed=0, sparsity=0.5,
        ...             epochs=1, finetune_epochs=0, batch_size=32, dataset='digits',
        ...             model='tutorial_mlp', scorer='magnitude', allocation='global',
        ...             structure='unstructured')
        >>> cfgs = [ml_collections.ConfigDict({**base, **kw}) for kw in
        ...         [{}, {'seed': 1}, {'learning_rate': 1e-2}, {'sparsity': 0.9}, {'method': 'imp'}]]
        >>> vmap_groups(cfgs)
        [[0, 1, 3], [2], [4]]
    """
    if isinstance(configs, (str, bytes)) or not isinstance(configs, Sequence):
        raise ConfigError(f"configs must be a list of ConfigDicts, got {type(configs).__name__}")
    groups: dict[Any, list[int]] = {}
    order: list[list[int]] = []
    for i, config in enumerate(configs):
        fields = _config_dict(config, i)
        if _unsupported(config) is not None:
            order.append([i])
            continue
        key = _freeze({k: v for k, v in fields.items() if k not in _VARYING})
        if key not in groups:
            groups[key] = []
            order.append(groups[key])
        groups[key].append(i)
    return order


def _first_difference(a: Any, b: Any) -> str | None:
    da, db = a.to_dict(), b.to_dict()
    for key in sorted(set(da) | set(db)):
        if key not in _VARYING and _freeze(da.get(key)) != _freeze(db.get(key)):
            return key
    return None


def _check_group(configs: Sequence[Any]) -> None:
    for i, config in enumerate(configs):
        _config_dict(config, i)
        why = _unsupported(config)
        if why is not None:
            raise ConfigError(f"configs[{i}] cannot be trained in a group: {why} (supported methods: "
                              f"{', '.join(SUPPORTED_METHODS)}; models: {', '.join(groupable_models())}); "
                              "run it alone")
        field = _first_difference(configs[0], config)
        if field is not None:
            raise ConfigError(f"configs[{i}] differs from configs[0] in field {field!r}: only "
                              f"{', '.join(_VARYING)} may differ within a group")


def run_group(configs: Sequence[Any], workdirs: Sequence[str | os.PathLike], *,
              strategy: str = "scan") -> list[dict]:
    """Runs a group from :func:`vmap_groups` and writes each ``workdir/result.json``.

    One config: exactly :func:`jaxprune.experiment.train_and_evaluate`. Several: trained as one group
    by :func:`fit_group` (``strategy``); each result has the fields ``train_and_evaluate`` gives it
    (with ``strategy='scan'`` the same values too), plus ``wall_s`` = the group's wall time / n,
    ``vmapped`` = n and ``vmap_strategy``.

    Example (not run here; it trains)::

        for g in vmap_groups(configs):
            run_group([configs[i] for i in g], [f"runs/{i}" for i in g])
    """
    configs, workdirs = list(configs), list(workdirs)
    if not configs or len(configs) != len(workdirs):
        raise ConfigError(f"run_group: need one workdir per config, got {len(configs)} configs and "
                          f"{len(workdirs)} workdirs")
    if len(configs) == 1:
        return [experiment.train_and_evaluate(configs[0], workdirs[0])]
    if strategy not in STRATEGIES:
        raise ConfigError(f"run_group: strategy must be one of {STRATEGIES}, got {strategy!r}")
    _check_group(configs)
    for workdir in workdirs:  # before any compute
        check_workdir(workdir)
    start = time.perf_counter()
    trainer = GroupTrainer(len(configs), strategy)

    def one(config: Any) -> Callable[[], dict]:
        def work() -> dict:
            # Each run in its own thread and run context: the method is the sequential one, only
            # its fit calls meet the group's (GroupTrainer).
            with run_context() as ctx:
                result = experiment.run_nn(with_precision(make_run(config, trainer)))
            sha = ctx.sha256()
            return result if sha is None else {**result, "fit_sha256": sha}
        return work

    results = run_in_group(trainer, [one(c.copy_and_resolve_references()) for c in configs])
    wall = time.perf_counter() - start
    n = len(configs)
    written = []
    for result, workdir in zip(results, workdirs):
        result = {**result, "kind": "nn", "schema_version": SCHEMA_VERSION, "wall_s": round(wall / n, 3),
                  "vmapped": n, "vmap_strategy": strategy}
        result = plain_result(result)
        write_result(result, workdir)
        written.append(result)
    return written
