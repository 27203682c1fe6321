"""Physically remove pruned units: a smaller linen model and its smaller variables.

For every producer in the model's :class:`~jaxprune.shrink.plans.Plan`: its kernel loses the unit's
column/filter (last axis) and bias entry, a following BatchNorm loses the channel's scale, bias,
running mean and variance, and the consumer loses the matching input rows (Dense), input channels
(conv) or the rows of the channel in the flattened (H, W, C) map. Shapes change, so this runs eagerly
on concrete unit masks, once, after pruning.

Mean replacement (Mean Replacement Pruning): a removed unit's output is replaced by its mean over
calibration data, folded into the consumer's bias (or, when the consumer has no bias, into the running
mean of the BatchNorm after it), so the next layer sees the unit's average contribution instead of 0.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxprune.errors import PruningError
from jaxprune.models.common import train_kwargs
from jaxprune.neurons.stats import UnitStats, UnitSummary
from jaxprune.shrink.plans import Edge, layer_params, plan_for, resolve_units

__all__ = ["shrink", "unit_means"]


def unit_means(stats: Any) -> np.ndarray:
    """Per-unit mean activation from ``UnitStats``, ``UnitSummary`` or a (units,) array.

    Example:
        >>> from jaxprune.neurons import unit_stats_from_array
        >>> unit_means(unit_stats_from_array(jnp.array([[1.0, 0.0], [3.0, 2.0]]))).tolist()
        [2.0, 1.0]
    """
    if isinstance(stats, UnitStats):
        return np.asarray(stats.total, np.float64) / max(int(stats.count), 1)
    if isinstance(stats, UnitSummary):
        return np.asarray(stats.mean, np.float64)
    return np.asarray(stats, np.float64)


def shrink(model: nn.Module, variables: Mapping, unit_masks: Mapping[str, Any], *,
           mean_replacement: Mapping[str, Any] | None = None,
           input_shape: Sequence[int] | None = None) -> tuple[nn.Module, dict]:
    """A smaller model and variables with the units where ``unit_masks`` is False removed.

    ``unit_masks`` maps a producer layer ('Dense_0', 'Conv_1', 'BasicBlock_3/Conv_0') to a (units,)
    bool vector (see :func:`unit_masks`); missing layers keep every unit, fixed layers (the output
    layer, ResNet residual-stream convs) must be all-True. ``mean_replacement`` maps a layer to its
    units' mean post-activation output (an array, or the layer's ``UnitStats`` / ``UnitSummary`` from
    :func:`jaxprune.neurons.collect_activation_stats`); layers without it are removed plainly.
    ``input_shape`` (one example's shape) makes a conv consumer's correction border-aware: the spatial
    average of its response to the constant mean map, zero padding included (one traced forward);
    without it every kernel tap is summed, which is exact only away from the border.
    Supported: :class:`~jaxprune.models.MLP`, ``LeNet5``, ``SmallCNN``, ``ResNet20``.

    Example:
        >>> from jaxprune.models import MLP, init_params
        >>> v = init_params(MLP((4, 2)), jax.random.PRNGKey(0), (1, 3))
        >>> m, v2 = shrink(MLP((4, 2)), v, {'Dense_0': np.array([True, False, True, False])})
        >>> m.features, v2['params']['Dense_1']['kernel'].shape
        ((2, 2), (2, 2))
    """
    plan = plan_for(model)
    bare = not (isinstance(variables, Mapping) and "params" in variables)
    cols = {"params": variables} if bare else dict(variables)
    params = cols["params"]
    keep = resolve_units(plan, params, unit_masks)
    means = dict(mean_replacement or {})
    unknown = sorted(set(means) - set(keep))
    if unknown:
        raise PruningError(f"shrink: mean_replacement names layers that are not prunable: {unknown}")

    new = {name: _copy(tree) for name, tree in cols.items()}
    # Folds first, on full-width leaves: a consumer may itself be a producer that loses units below.
    folds = [e for e in plan.edges if e.layer in means and not keep[e.layer].all()]
    gone = {e.consumer: _removed_means(e, keep[e.layer], unit_means(means[e.layer])) for e in folds}
    exact = {}
    if input_shape is not None:
        convs = {e.consumer: gone[e.consumer] for e in folds if e.kind == "conv"}
        exact = _conv_responses(model, cols, input_shape, convs) if convs else {}
    for edge in folds:
        delta = exact.get(edge.consumer)
        if delta is None:
            delta = _tap_sum(params, edge, gone[edge.consumer])
        _fold(new, edge, delta)
    for edge in plan.edges:
        idx = np.flatnonzero(keep[edge.layer])
        _take_last(new["params"], edge.layer, ("kernel", "bias"), idx)
        for norm in edge.norms:
            for tree in new.values():
                _take_last(tree, norm, ("scale", "bias", "mean", "var"), idx, missing_ok=True)
        _shrink_input(new["params"], params, edge, keep[edge.layer])
    widths = {e.layer: int(keep[e.layer].sum()) for e in plan.edges}
    out = new["params"] if bare else new
    return plan.rebuild(widths), out


def _copy(tree: Any) -> Any:
    """A fresh nest of dicts over the same leaves (we replace leaves, never mutate arrays)."""
    return {k: _copy(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree


def _take_last(tree: Mapping, layer: str, names: tuple[str, ...], idx: np.ndarray,
               missing_ok: bool = False) -> None:
    node = layer_params(tree, layer, missing_ok=missing_ok)
    for name in names if node is not None else ():
        if name in node:
            node[name] = jnp.take(node[name], idx, axis=-1)


def _kernel(params: Mapping, layer: str) -> np.ndarray:
    return np.asarray(layer_params(params, layer)["kernel"])


def _shrink_input(new_params: Mapping, params: Mapping, edge: Edge, keep: np.ndarray) -> None:
    """Drop the consumer's input rows/channels that read the removed units."""
    node = layer_params(new_params, edge.consumer)
    node["kernel"] = jnp.asarray(node["kernel"])[_input_index(params, edge, keep)]


def _input_index(params: Mapping, edge: Edge, keep: np.ndarray) -> tuple:
    kernel = _kernel(params, edge.consumer)
    units = keep.shape[0]
    if edge.kind == "dense":
        _expect(kernel.ndim == 2 and kernel.shape[0] == units, edge, kernel.shape, units)
        return (np.flatnonzero(keep),)
    if edge.kind == "conv":
        _expect(kernel.ndim == 4 and kernel.shape[2] == units, edge, kernel.shape, units)
        return (slice(None), slice(None), np.flatnonzero(keep))
    # flatten of an (H, W, C) map: row p*C + c reads channel c at spatial position p.
    _expect(kernel.ndim == 2 and kernel.shape[0] % units == 0, edge, kernel.shape, units)
    return (np.flatnonzero(np.tile(keep, kernel.shape[0] // units)),)


def _expect(ok: bool, edge: Edge, shape: tuple, units: int) -> None:
    if not ok:
        raise PruningError(f"shrink: consumer {edge.consumer!r} (kernel {shape}) does not read the "
                           f"{units} units of {edge.layer!r} as a {edge.kind!r} input; the variables do "
                           "not match the model")


def _removed_means(edge: Edge, keep: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """The removed units' means, 0 for kept units (checked)."""
    if mean.shape != keep.shape:
        raise PruningError(f"shrink: mean_replacement for layer {edge.layer!r} has shape {mean.shape}, "
                           f"expected ({keep.shape[0]},)")
    if not np.isfinite(mean).all():
        raise PruningError(f"shrink: mean_replacement for layer {edge.layer!r} is not finite")
    return np.where(keep, 0.0, mean)


def _tap_sum(params: Mapping, edge: Edge, gone: np.ndarray) -> np.ndarray:
    """The consumer's pre-activation shift when the removed units output their means.

    Dense: Σ_r mean_r · W[r, :]. Flatten: the channel's mean at every spatial position, i.e. its rows
    summed. Conv: mean_c · Σ_{kh,kw} W[kh, kw, c, :], exact away from the border (SAME zero padding
    sees fewer taps there; pass ``input_shape`` to :func:`shrink` for the border-aware average).
    """
    kernel = _kernel(params, edge.consumer).astype(np.float64)
    if edge.kind == "dense":
        return gone @ kernel
    if edge.kind == "conv":
        return np.einsum("c,hwco->o", gone, kernel)
    return np.einsum("c,pco->o", gone, kernel.reshape(-1, gone.shape[0], kernel.shape[-1]))


def _conv_responses(model: nn.Module, variables: Mapping, input_shape: Sequence[int],
                    gone: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Spatial mean of each conv consumer's response to its constant removed-means input map.

    Convolution is linear, so a bias-free ``conv(const)`` at each output position is exactly what the
    removed channels would have added there, border taps included; the spatial mean is the best
    (least-squares) constant a bias can carry. Found by intercepting the consumers in one forward.
    """
    kwargs = train_kwargs(model)

    def run(v: Mapping) -> dict:
        found = {}

        def intercept(next_fun, args, kw, context):
            name = "/".join(context.module.path)
            if context.method_name == "__call__" and name in gone and args:
                const = jnp.broadcast_to(jnp.asarray(gone[name], args[0].dtype), args[0].shape)
                # A bias-free copy of the same conv (strides, padding, dilation), on its own kernel.
                conv = context.module.clone(parent=None, use_bias=False)
                kernel = layer_params(v["params"], name)["kernel"]
                resp = conv.apply({"params": {"kernel": kernel}}, const)
                found[name] = jnp.mean(resp, axis=tuple(range(resp.ndim - 1)))
            return next_fun(*args, **kw)

        with nn.intercept_methods(intercept):
            model.apply(v, jnp.zeros((1, *(int(d) for d in input_shape)), jnp.float32), **kwargs)
        return found

    found = jax.jit(run)(variables)
    missing = sorted(set(gone) - set(found))
    if missing:
        raise PruningError(f"shrink: consumers {missing} were not called in the forward pass")
    return {k: np.asarray(v, np.float64) for k, v in found.items()}


def _fold(new: dict, edge: Edge, delta: np.ndarray) -> None:
    """Add ``delta`` to the consumer's bias, or subtract it from the running mean of its BatchNorm."""
    node = layer_params(new["params"], edge.consumer)
    if "bias" in node:
        node["bias"] = _shifted(node["bias"], delta)
        return
    # No bias (ResNet's conv before BatchNorm): BN(y + d) with running mean μ equals BN(y) with μ - d,
    # exact in inference mode (train=False), where the running statistics are used.
    stats = layer_params(new.get("batch_stats", {}), edge.fold, missing_ok=True) if edge.fold else None
    if stats is None or "mean" not in stats:
        raise PruningError(f"shrink: consumer {edge.consumer!r} has no bias and no BatchNorm running "
                           f"mean to fold the mean replacement of {edge.layer!r} into")
    stats["mean"] = _shifted(stats["mean"], -delta)


def _shifted(leaf: Any, delta: np.ndarray) -> Any:
    """``leaf + delta`` computed in float64, returned at the leaf's dtype."""
    return jnp.asarray((np.asarray(leaf, np.float64) + delta).astype(np.asarray(leaf).dtype))
