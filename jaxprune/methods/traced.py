"""Structured runs through the traced graph: for models without a hand-written shrink plan.

``jaxprune run model=vit structure=neurons shrink=true`` (or ``resnet18``, ``mobilenet_v2``, a model
the user registered without ``shrink_plan=``) comes here from
:func:`~jaxprune.methods.structured.structured_one_shot`. The trained model is traced
(:func:`jaxprune.structure.trace_linen`), and the run's units are the graph's coupled **groups**, not
single layers: a hidden Dense layer's outputs, a block's inner channels, and also the residual stream
(every conv or Dense that writes into it, with its norms, shrinks together).

* ``structure=neurons|channels``: every prunable ``features``/``residual`` group;
  ``structure=heads``: the attention heads (all of a head's q/k/v/out slices together).
* Scores: ``l1``/``l2``/``taylor`` over every trainable member slice of the group
  (:func:`jaxprune.structure.group_scores`); activation criteria from the producers' outputs
  (:func:`jaxprune.structure.activation_group_scores`).
* Each group of ``n`` units loses ``round_half_even(sparsity * n)`` (never all), as the plan path.
* ``shrink=true``: :func:`jaxprune.structure.apply_plan` rebuilds the smaller model (checked by
  re-tracing it); ``shrink=false`` zeroes every member slice of the removed units (masks).

Models with a plan keep the plan path, so their results are unchanged; for them
:func:`unit_masks_to_groups` maps the plan's per-layer unit masks onto the graph's groups (the test
that plan and trace agree uses it).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import data as jdata
from jaxprune.errors import ConfigError, PruningError
from jaxprune.harness import UNIT_CRITERIA, Run, score_gradients
from jaxprune.neurons import CRITERIA, collect_activation_stats, get_criterion
from jaxprune.structure import Graph, StructuredPlan, group_scores, select_units, trace_linen
from jaxprune.structure.api import attention_dims
from jaxprune.structure.importance import activation_group_scores, producer_layers

__all__ = ["UNIT_KINDS", "RANDOM_SCORE_SEED", "calibration_inputs", "run_groups", "group_names", "traced_keep",
           "unit_masks_to_groups", "traced_masks"]

UNIT_KINDS = {"neurons": ("features", "residual"), "channels": ("features", "residual"),
              "heads": ("heads",)}
"""Which group kinds of the traced graph each run ``structure`` prunes."""

RANDOM_SCORE_SEED = 20_011
"""``criterion=random`` draws its unit scores from ``PRNGKey(seed + RANDOM_SCORE_SEED)``: the same
units for the same seed, independent of the keys that initialise and shuffle."""


def calibration_inputs(run: Run) -> list:
    """The first ``calibration_batches`` training inputs (a fixed shuffle), for activation criteria.

    Example (inside a run): ``len(calibration_inputs(run)) == run.config.calibration_batches``.
    """
    c = run.config
    it = jdata.batches(*run.train, c.batch_size, seed=c.seed + 10_007, epoch=0)
    return [b.images for _, b in zip(range(int(c.calibration_batches)), it)]


def run_groups(graph: Graph, structure: str) -> tuple[int, ...]:
    """Ids of the prunable groups a run with ``structure`` prunes (heads: whole heads only).

    >>> from jaxprune.models import MLP, init_params
    >>> m = MLP((8, 4, 2)); v = init_params(m, jax.random.PRNGKey(0), (1, 3))
    >>> len(run_groups(trace_linen(m, v, jnp.ones((1, 3))), 'neurons'))
    2
    """
    if structure not in UNIT_KINDS:
        raise ConfigError(f"config field 'structure' must be one of {sorted(UNIT_KINDS)} for a traced "
                          f"structured run, got {structure!r}")
    partial = set(attention_dims(graph))
    return tuple(g.id for g in graph.groups
                 if g.prunable and g.kind in UNIT_KINDS[structure] and g.id not in partial)


def group_names(graph: Graph, ids: Any) -> dict[int, str]:
    """``{group id: name}``: the first producer layer, ``+N`` for a group with more producers.

    >>> from jaxprune.models import MLP, init_params
    >>> m = MLP((8, 4, 2)); v = init_params(m, jax.random.PRNGKey(0), (1, 3))
    >>> g = trace_linen(m, v, jnp.ones((1, 3)))
    >>> sorted(group_names(g, run_groups(g, 'neurons')).values())
    ['Dense_0', 'Dense_1']
    """
    by_id = {g.id: g for g in graph.groups}
    out: dict[int, str] = {}
    for gid in ids:
        layers = producer_layers(by_id[gid])
        name = layers[0] + (f"+{len(layers) - 1}" if len(layers) > 1 else "")
        out[gid] = name if name not in out.values() else f"{name}#{gid}"
    return out


def _scores(run: Run, graph: Graph, ids: tuple[int, ...], params: Any, model_state: Any,
            criterion: str, base: Any, kwargs: Mapping[str, Any]) -> dict[int, np.ndarray]:
    name = "l2" if criterion == "none" else criterion
    chosen = Graph(tuple(g for g in graph.groups if g.id in ids), graph.shapes)
    if name == "random":
        key = jax.random.PRNGKey(int(run.config.seed) + RANDOM_SCORE_SEED)
        return group_scores(chosen, {"params": params}, "random", key=key)
    if name in ("l1", "l2", "taylor"):
        grads = None
        if name == "taylor":
            grads = {"params": score_gradients(run, params, model_state,
                                               batches=int(run.config.calibration_batches))}
        return group_scores(chosen, {"params": params}, name, grads=grads,
                            include=lambda p: p.startswith("params/"))
    if name not in CRITERIA:
        raise ConfigError(f"config field 'criterion' must be one of {list(UNIT_CRITERIA)}, "
                          f"got {criterion!r}")
    layers = sorted({layer for g in chosen.groups for layer in producer_layers(g)})
    stats = collect_activation_stats(base, {"params": params, **model_state}, calibration_inputs(run),
                                     layers=layers, **kwargs)
    try:
        return activation_group_scores(chosen, get_criterion(name)(stats=stats))
    except PruningError as err:
        raise ConfigError(f"criterion={name!r} on model={run.config.model!r}: {err}") from err


def traced_keep(run: Run, base: Any, params: Any, model_state: Any, example: Any,
                kwargs: Mapping[str, Any]) -> tuple[StructuredPlan, dict[int, str]]:
    """Trace the trained model, score the run's groups and choose the kept units.

    Returns the plan (``keep`` over the run's groups) and the groups' names (``units_kept`` keys).
    Example (inside a run): ``traced_keep(run, model, params, {}, x[:1], {})``.
    """
    c = run.config
    graph = trace_linen(base, {"params": params, **model_state}, example, **kwargs)
    ids = run_groups(graph, str(c.structure))
    if not ids:
        raise ConfigError(f"structure={c.structure!r}: model={c.model!r} has no prunable group of kind "
                          f"{UNIT_KINDS[str(c.structure)]} in its traced graph")
    scores = _scores(run, graph, ids, params, model_state, str(c.criterion), base, kwargs)
    others = [g.id for g in graph.groups if g.id not in ids]
    keep = select_units(graph, scores, float(c.sparsity), skip=others)
    return StructuredPlan(graph, scores, keep, "linen"), group_names(graph, ids)


def unit_masks_to_groups(graph: Graph, unit_masks: Mapping[str, Any]) -> dict[int, np.ndarray]:
    """Per-layer unit masks (``{layer: (units,) bool}``, a shrink plan's) as ``{group id: keep}``.

    A layer's units are the group on its kernel's last axis; two layers in one group must agree.

    >>> from jaxprune.models import MLP, init_params
    >>> m = MLP((3, 2)); v = init_params(m, jax.random.PRNGKey(0), (1, 4))
    >>> g = trace_linen(m, v, jnp.ones((1, 4)))
    >>> [k.tolist() for k in unit_masks_to_groups(g, {'Dense_0': np.array([True, False, True])}).values()]
    [[True, False, True]]
    """
    out: dict[int, np.ndarray] = {}
    for layer, mask in unit_masks.items():
        path = f"params/{layer}/kernel"
        if path not in graph.shapes:
            raise PruningError(f"unit_masks_to_groups: no kernel '{path}' in the traced graph")
        group = graph.group_of(path, len(graph.shapes[path]) - 1)
        mask = np.asarray(mask, bool)
        if group is None or group.size != mask.shape[0]:
            raise PruningError(f"unit_masks_to_groups: layer {layer!r}'s {mask.shape[0]} units are not one "
                               "group of the traced graph")
        if group.id in out and not np.array_equal(out[group.id], mask):
            raise PruningError(f"unit_masks_to_groups: layer {layer!r} shares group {group.id} with "
                               "another layer but has a different mask")
        out[group.id] = mask
    return out


def traced_masks(plan: StructuredPlan, params: Any) -> Any:
    """Element masks (``params``' structure, bool) that zero every member slice of the removed units.

    >>> from jaxprune.models import MLP, init_params
    >>> m = MLP((3, 2)); v = init_params(m, jax.random.PRNGKey(0), (1, 4))
    >>> g = trace_linen(m, v, jnp.ones((1, 4)))
    >>> keep = unit_masks_to_groups(g, {'Dense_0': np.array([1, 0, 1], bool)})
    >>> mk = traced_masks(StructuredPlan(g, {}, keep, 'linen'), v['params'])
    >>> mk['Dense_0']['bias'].tolist(), mk['Dense_1']['kernel'][:, 0].tolist()
    ([True, False, True], [True, False, True])
    """
    ones = jax.tree.map(lambda x: np.ones(np.shape(x), bool), params)
    masked = plan.graph.masked({"params": ones}, plan.keep)["params"]
    return jax.tree.map(lambda m: jnp.asarray(m, bool), masked)
