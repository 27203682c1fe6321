"""Neuron/channel pruning for ``jaxprune run structure=neurons|channels``: score units, remove them.

``one_shot`` hands a run here when its structure is ``neurons`` or ``channels``:

1. train dense for ``epochs``;
2. score every *hidden* unit (the output layer's units are the classes and are never pruned) with
   ``criterion`` — ``entropy``, ``apoz``, ``hoyer``, ``stability``, ``variance`` from activation
   statistics over ``calibration_batches`` training batches, ``l1``, ``l2``, ``taylor`` from the
   weights (``criterion=none`` means ``l2``, the filter-norm baseline of Li et al. 2017), or
   ``random`` (uniform scores from ``seed``: the baseline a criterion must beat);
3. remove ``round_half_even(sparsity * units)`` units of each prunable layer (never all of them);
4. ``shrink=true``: rebuild a smaller model (:func:`jaxprune.shrink.shrink`), optionally folding the
   removed units' mean activation into the next layer's bias (``mean_replacement=true``, Mean
   Replacement Pruning); else mask the units' weights, bias and norm parameters (same function);
5. fine-tune ``finetune_epochs`` (the small model is dense: plain Adam; the masked one: masked Adam).

A model without a hand-written shrink plan (``resnet18``, ``mobilenet_v2``, ``vit``, a user's
registered model), and every ``structure=heads`` run, goes through the traced graph instead
(:mod:`jaxprune.methods.traced`: its units are the graph's coupled groups).

The result adds ``criterion``, ``units_kept`` per layer, ``params_final`` (the real parameter count
of the final model) and the cost fields every run gets (``flops_*``, ``latency_*``).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

from jaxprune.errors import ConfigError
from jaxprune.harness import (MethodOutput, Run, accuracy, finetune_learning_rate, finetune_masked, rewrap,
                              UNIT_CRITERIA, score_gradients, train, train_dense, unwrap)
from jaxprune.masks import apply_masks, summary
from jaxprune.models.common import train_kwargs
from jaxprune.methods.traced import RANDOM_SCORE_SEED, calibration_inputs, traced_keep, traced_masks
from jaxprune.neurons import CRITERIA, collect_activation_stats, get_criterion
from jaxprune.models.registry import registered_plan
from jaxprune.shrink import plan_for, removal_masks, shrink, unit_masks_from_scores
from jaxprune.shrink.plans import layer_params
from jaxprune.structure import apply_plan

__all__ = ["structured_one_shot", "unit_scores", "STRUCTURED"]

STRUCTURED = ("neurons", "channels", "heads")


def unit_scores(run: Run, params: Any, model_state: Any, criterion: str,
                layers: tuple[str, ...]) -> tuple[dict, dict | None]:
    """``({layer: (units,) scores}, activation stats or None)`` for the prunable ``layers``.

    Example (inside a run): ``unit_scores(run, params, {}, 'apoz', ('Dense_0', 'Dense_1'))``.
    """
    name = "l2" if criterion == "none" else criterion
    if name == "random":  # the baseline every criterion must beat: uniform scores, seeded by `seed`
        key = jax.random.PRNGKey(int(run.config.seed) + RANDOM_SCORE_SEED)
        stats = _stats(run, params, model_state) if run.config.mean_replacement else None
        return {k: np.asarray(jax.random.uniform(jax.random.fold_in(key, i), (_units(params, k),)))
                for i, k in enumerate(layers)}, stats
    if name not in CRITERIA:
        raise ConfigError(f"config field 'criterion' must be one of {list(UNIT_CRITERIA)}, "
                          f"got {criterion!r}")
    inputs = CRITERIA[name].inputs
    stats = None
    if "stats" in inputs or run.config.mean_replacement:
        stats = _stats(run, params, model_state)
    given: dict[str, Any] = {}
    if "stats" in inputs:
        given["stats"] = stats
    if "params" in inputs:
        given["params"] = params
        given["layers"] = layers
    if "grads" in inputs:
        given["grads"] = score_gradients(run, params, model_state, batches=int(run.config.calibration_batches))
    scores = get_criterion(name)(**given)
    missing = sorted(set(layers) - set(scores))
    if missing:
        raise ConfigError(f"criterion {name!r} gave no scores for prunable layers {missing}")
    return {k: scores[k] for k in layers}, stats


def _stats(run: Run, params: Any, model_state: Any) -> dict:
    base = unwrap(run.model)
    return collect_activation_stats(base, {"params": params, **model_state}, calibration_inputs(run),
                                    **train_kwargs(base))


def _units(params: Any, layer: str) -> int:
    kernel = (layer_params(params, layer, missing_ok=True) or {}).get("kernel")
    if kernel is None or np.ndim(kernel) < 1:
        raise ConfigError(f"criterion='random': prunable layer {layer!r} has no 'kernel' leaf in params")
    return int(np.shape(kernel)[-1])


def structured_one_shot(run: Run) -> MethodOutput:
    """Train dense, remove the lowest-scoring units of each hidden layer, (shrink,) fine-tune."""
    c = run.config  # its fields were validated before data loaded (harness.validate_config)
    base = unwrap(run.model)
    if registered_plan(base) is None or c.structure == "heads":
        return _traced_one_shot(run, base)
    plan = plan_for(base)
    layers = tuple(e.layer for e in plan.edges)
    state = train_dense(run)
    params, model_state = state.params, state.model_state
    dense_acc = accuracy(run, params, model_state)
    scores, stats = unit_scores(run, params, model_state, c.criterion, layers)
    keep = unit_masks_from_scores(scores, float(c.sparsity))
    # Structural masks over the original model: what the shrunk model removes, element by element.
    masks = removal_masks(base, params, keep)
    extra: dict[str, Any] = {"criterion": "l2" if c.criterion == "none" else c.criterion,
                             "units_kept": {k: int(v.sum()) for k, v in keep.items()},
                             "units_total": {k: int(v.size) for k, v in keep.items()},
                             "shrunk": bool(c.shrink), "mean_replacement": bool(c.mean_replacement)}
    if not c.shrink:
        pruned = apply_masks(params, masks)
        pruned_acc = accuracy(run, pruned, model_state)
        pruned, model_state = finetune_masked(run, pruned, model_state, masks, first_epoch=c.epochs)
        return MethodOutput(pruned, model_state, masks, dense_acc, pruned_acc, extra=extra)

    means = {k: stats[k] for k in layers} if c.mean_replacement else None
    small_model, small = shrink(base, {"params": params, **model_state}, keep,
                                mean_replacement=means, input_shape=run.train[0].shape[1:])
    # Totals are those of the original model with the removed units counted as zeros, so that a
    # shrunk run and a masked run of the same config report the same sparsity; `params_final` is the
    # real size of the model that is left.
    return _finish_small(run, small_model, small, params, model_state, masks, dense_acc, extra)


def _finish_small(run: Run, small_model: Any, small: Any, params: Any, model_state: Any, masks: Any,
                  dense_acc: float, extra: dict) -> MethodOutput:
    c = run.config
    small_model = rewrap(run.model, small_model)
    small_params = small["params"]
    small_state = {k: v for k, v in small.items() if k != "params"}
    small_run = run._replace(model=small_model)
    pruned_acc = accuracy(small_run, small_params, small_state)
    if c.finetune_epochs:
        st = train(small_run, optax.adam(finetune_learning_rate(c)), "finetune", variables=small,
                   epochs=c.finetune_epochs, first_epoch=c.epochs)
        small_params, small_state = st.params, st.model_state
    test_acc = accuracy(small_run, small_params, small_state)
    ss = summary(small_params)
    return MethodOutput(apply_masks(params, masks), model_state, masks, dense_acc, pruned_acc,
                        test_acc, small_model, small,
                        {**extra, "nonzero_params": ss.total["nonzero"], "params_final": ss.total["size"]})


def _traced_one_shot(run: Run, base: Any) -> MethodOutput:
    """The same run for a model without a hand-written plan: units are the traced graph's groups."""
    c = run.config
    state = train_dense(run)
    params, model_state = state.params, state.model_state
    dense_acc = accuracy(run, params, model_state)
    kwargs = train_kwargs(base)
    example = run.train[0][:1]
    plan, names = traced_keep(run, base, params, model_state, example, kwargs)
    masks = traced_masks(plan, params)
    extra: dict[str, Any] = {"criterion": "l2" if c.criterion == "none" else c.criterion,
                             "units_kept": {names[g]: int(k.sum()) for g, k in plan.keep.items()},
                             "units_total": {names[g]: int(k.size) for g, k in plan.keep.items()},
                             "shrunk": bool(c.shrink), "mean_replacement": False}
    if not c.shrink:
        pruned = apply_masks(params, masks)
        pruned_acc = accuracy(run, pruned, model_state)
        pruned, model_state = finetune_masked(run, pruned, model_state, masks, first_epoch=c.epochs)
        return MethodOutput(pruned, model_state, masks, dense_acc, pruned_acc, extra=extra)
    small_model, small = apply_plan(plan, base, {"params": params, **model_state}, example,
                                    apply_kwargs=kwargs)
    return _finish_small(run, small_model, small, params, model_state, masks, dense_acc, extra)
