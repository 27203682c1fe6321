"""Dependency plans: which layers own removable units, and which layers must follow a removal.

Removing a unit touches more than its own layer. Like Torch-Pruning's dependency graph, a plan lists,
for every prunable *producer*, the per-channel layers that follow it (BatchNorm) and the *consumer*
whose input axis must shrink with it. Our plans are written per architecture instead of traced: each
registered model may carry one (``jaxprune.models.register_model(..., shrink_plan=...)``; the zoo's
are in :mod:`jaxprune.models.plans`), and anything else is refused (a wrong guess would silently
build a wrong model).
"""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from flax import linen as nn

from jaxprune.errors import PruningError
from jaxprune.models.plans import Edge, Plan
from jaxprune.models.registry import MODELS, registered_plan

__all__ = ["Edge", "Plan", "plan_for", "layer_params", "resolve_units"]


def plan_for(model: nn.Module) -> Plan:
    """The dependency plan of a registered model's exact class; a PruningError naming it otherwise.

    Example:
        >>> from jaxprune.models import MLP
        >>> [e.consumer for e in plan_for(MLP((8, 4, 2))).edges]
        ['Dense_1', 'Dense_2']
    """
    factory = registered_plan(model)
    if factory is None:
        names = ", ".join(sorted({e.module.__name__ for e in MODELS.values() if e.shrink_plan is not None}))
        raise PruningError(f"shrink: unsupported architecture: module {type(model).__name__!r} has no "
                           f"dependency plan (supported: {names}); its layers' producer -> consumer "
                           "links are unknown, so its units cannot be removed safely (register one: "
                           "jaxprune.models.register_model(..., shrink_plan=...))")
    return factory(model)


def layer_params(params: Mapping, layer: str, *, missing_ok: bool = False) -> Mapping | None:
    """The dict of ``layer`` ('BasicBlock_0/Conv_0') inside a linen params (or variables) tree.

    A layer not in the tree raises :class:`PruningError` naming it, or gives ``None`` when
    ``missing_ok`` (a layer without ``batch_stats``, say). The one lookup of layers by name in shrink.

    >>> layer_params({'Dense_0': {'kernel': 1}}, 'Dense_0'), layer_params({}, 'Dense_0', missing_ok=True)
    ({'kernel': 1}, None)
    """
    node = params
    for name in layer.split("/"):
        if not isinstance(node, Mapping) or name not in node:
            if missing_ok:
                return None
            raise PruningError(f"shrink: layer {layer!r} not found in the params tree")
        node = node[name]
    return node


def resolve_units(plan: Plan, params: Mapping, unit_masks: Mapping) -> dict[str, np.ndarray]:
    """Checked keep-vectors for every producer of ``plan`` (layers not given keep all units).

    A layer in ``unit_masks`` that is fixed (output, residual stream) must keep every unit; a layer
    that is neither a producer nor fixed, a wrong length, a traced array or an emptied layer raise.
    """
    if not isinstance(unit_masks, Mapping):
        raise PruningError(f"shrink: unit_masks must map layer name -> (units,) bool, got "
                           f"{type(unit_masks).__name__}")
    widths = {e.layer: int(np.shape(layer_params(params, e.layer)["kernel"])[-1]) for e in plan.edges}
    out = {layer: np.ones(n, bool) for layer, n in widths.items()}
    for layer, keep in unit_masks.items():
        if isinstance(keep, jax.core.Tracer):
            raise PruningError(f"shrink: unit mask of layer {layer!r} is traced; shrinking changes "
                               "shapes, so it runs outside jit on concrete masks")
        keep = np.asarray(keep)
        if keep.dtype != np.bool_ or keep.ndim != 1:
            raise PruningError(f"shrink: unit mask of layer {layer!r} must be a 1-D bool vector, got "
                               f"dtype {keep.dtype} shape {keep.shape}")
        if layer in plan.fixed:
            if not keep.all():
                raise PruningError(f"shrink: {plan.model} layer {layer!r} cannot lose units: it "
                                   f"{plan.fixed[layer]}")
            continue
        if layer not in widths:
            raise PruningError(f"shrink: {plan.model} has no prunable layer {layer!r}; prunable: "
                               f"{sorted(widths)}")
        if keep.shape[0] != widths[layer]:
            raise PruningError(f"shrink: unit mask of layer {layer!r} has {keep.shape[0]} entries, "
                               f"the layer has {widths[layer]} units")
        if not keep.any():
            raise PruningError(f"shrink: unit mask would empty layer {layer!r}; keep at least one unit")
        out[layer] = keep
    return out
