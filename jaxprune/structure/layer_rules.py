"""Size attributes of flax's layers, from the new shapes of their params (used by
:mod:`jaxprune.structure.rebuild`).

A linen rule is ``rule(module, {param: (old shape, new shape)}, call_args, hint) -> {attribute:
value}``, run while the module is called; an nnx rule is ``rule(module, {leaf: (old, new)}, hint)``,
run on a clone whose arrays are already the smaller ones. ``hint`` carries what shapes alone cannot
say (how many groups a GroupNorm keeps).

>>> import flax.linen as nn
>>> LINEN_RULES[nn.Dense](nn.Dense(8), {'kernel': ((3, 8), (3, 5))}, (), {})
{'features': 5}
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import numpy as np
from flax import nnx

from jaxprune.errors import PruningError

__all__ = ["Shapes", "Rule", "LINEN_RULES", "NNX_RULES", "rule_for", "linen_path", "linen_attention"]

Shapes = Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]]  # param name -> (old shape, new shape)
Rule = Callable[[Any, Shapes, tuple, Mapping[str, int]], dict]


def _new(shapes: Shapes, name: str) -> tuple[int, ...]:
    return shapes[name][1]


def _like(old: Any, values: Sequence[int]) -> Any:
    """``values`` as an int when ``old`` was one, else as a tuple."""
    return int(values[-1]) if isinstance(old, (int, np.integer)) else tuple(int(v) for v in values)


def _dense(m, shapes, args, hint):
    return {"features": _new(shapes, "kernel")[-1]} if "kernel" in shapes else {}


def _dense_general(m, shapes, args, hint):
    if "kernel" not in shapes:
        return {}
    n = 1 if isinstance(m.features, int) else len(m.features)
    return {"features": _like(m.features, _new(shapes, "kernel")[-n:])}


def _conv(m, shapes, args, hint):
    if "kernel" not in shapes:
        return {}
    kernel = _new(shapes, "kernel")
    out = {"features": kernel[-1]}
    if getattr(m, "feature_group_count", 1) != 1 and args:
        # The input's channels are known only now; a depthwise conv's group count follows them.
        out["feature_group_count"] = int(np.shape(args[0])[-1]) // kernel[-2]
    return out


def _conv_transpose(m, shapes, args, hint):
    if "kernel" not in shapes:
        return {}
    kernel = _new(shapes, "kernel")
    return {"features": kernel[-2] if m.transpose_kernel else kernel[-1]}


def _embed(m, shapes, args, hint):
    if "embedding" not in shapes:
        return {}
    rows, cols = _new(shapes, "embedding")
    return {"num_embeddings": rows, "features": cols}


def _einsum(m, shapes, args, hint):
    return {"shape": _new(shapes, "kernel")} if "kernel" in shapes else {}


def _no_attributes(m, shapes, args, hint):
    # Norm params take their shape from the input, so flax's check passes without any change.
    return {}


def _linen_group_norm(m, shapes, args, hint):
    name = "scale" if "scale" in shapes else "bias"
    if name not in shapes:
        return {}
    (old,), (new,) = shapes[name]
    if "groups" in hint:
        return {"num_groups": hint["groups"], "group_size": None}
    groups = m.num_groups if m.group_size is None else old // m.group_size
    size = old // groups
    # Whole groups removed is preferred: the kept groups' statistics stay what they were.
    if new % size == 0:
        return {"num_groups": new // size} if m.group_size is None else {}
    if new % groups == 0:
        return {} if m.group_size is None else {"group_size": new // groups}
    return _group_error(m, old, new)


def _group_error(m, old, new):
    raise PruningError(
        f"module '{linen_path(m)}' ({type(m).__name__}): {old} channels shrank to {new}, which neither "
        "its num_groups nor its group_size divides; pass overrides={path: {'num_groups': ...}}")


LINEN_RULES: dict[type, Rule] = {
    nn.Dense: _dense,
    nn.DenseGeneral: _dense_general,
    nn.Conv: _conv,
    nn.ConvLocal: _conv,
    nn.ConvTranspose: _conv_transpose,
    nn.Embed: _embed,
    nn.Einsum: _einsum,
    nn.LayerNorm: _no_attributes,
    nn.RMSNorm: _no_attributes,
    nn.BatchNorm: _no_attributes,
    nn.GroupNorm: _linen_group_norm,
}
"""Size attributes of flax's linen layers, from the new shapes of their own params (``rule(module,
{param: (old, new)}, call_args, hint) -> {attribute: value}``). ``MultiHeadDotProductAttention`` owns no
params: its query/key/value/out ``DenseGeneral`` children are resized, and the attention follows their
kernels."""


def rule_for(rules: Mapping[type, Any], module: Any) -> Optional[Any]:
    """The rule of the nearest class of ``module`` that ``rules`` names (None: a user module).

    >>> import flax.linen as nn
    >>> rule_for(LINEN_RULES, nn.Dense(2)) is LINEN_RULES[nn.Dense], rule_for(LINEN_RULES, nn.Module())
    (True, None)
    """
    for cls in type(module).__mro__:
        if cls in rules:
            return rules[cls]
    return None


def linen_path(m: Any) -> str:
    """The variable path of a bound linen module (``'block/conv_a'``).

    >>> import flax.linen as nn
    >>> linen_path(nn.Dense(2))
    '<unbound>'
    """
    return "/".join(m.scope.path) if getattr(m, "scope", None) is not None else "<unbound>"


def _shape(m, name):
    var = getattr(m, name, None)
    return None if var is None else tuple(np.shape(var[...]))


def _nnx_linear(m, s, hint=None):
    k = _shape(m, "kernel")
    return {"in_features": k[0], "out_features": k[1]}


def _nnx_linear_general(m, s, hint=None):
    k = _shape(m, "kernel")
    nb, ni = len(getattr(m, "batch_axis", {}) or {}), len(m.in_features)
    return {"in_features": tuple(k[nb:nb + ni]), "out_features": _like(m.out_features, k[nb + ni:])}


def _nnx_conv(m, s, hint=None):
    k = _shape(m, "kernel")
    groups = m.feature_group_count
    if groups != 1 and hint and "groups" in hint:
        groups = hint["groups"]
    elif groups != 1 and s["kernel"][0][-2] == 1:
        # Depthwise: each group keeps its channel multiplier, so the group count follows the output.
        groups = k[-1] // (s["kernel"][0][-1] // m.feature_group_count)
    return {"out_features": k[-1], "in_features": k[-2] * groups, "feature_group_count": groups}


def _nnx_conv_transpose(m, s, hint=None):
    k = _shape(m, "kernel")
    return ({"in_features": k[-1], "out_features": k[-2]} if m.transpose_kernel else
            {"in_features": k[-2], "out_features": k[-1]})


def _nnx_embed(m, s, hint=None):
    rows, cols = _shape(m, "embedding")
    return {"num_embeddings": rows, "features": cols}


def _nnx_norm(m, s, hint=None):
    for name in ("scale", "bias", "mean", "var"):
        shape = _shape(m, name) if isinstance(getattr(m, name, None), nnx.Variable) else None
        if shape is not None:
            return {"num_features": shape[-1]}
    return {}


def _nnx_group_norm(m, s, hint):
    (new,) = _nnx_norm(m, s).values() or (None,)
    if new is None:
        return {}
    if "groups" in hint:
        return {"num_groups": hint["groups"], "group_size": new // hint["groups"]}
    if new % m.group_size == 0:
        return {"num_groups": new // m.group_size}
    if new % m.num_groups == 0:
        return {"group_size": new // m.num_groups}
    raise PruningError(f"GroupNorm with {m.num_groups * m.group_size} channels shrank to {new}, which "
                       f"neither its num_groups ({m.num_groups}) nor its group_size ({m.group_size}) "
                       "divides; pass overrides={path: {'num_groups': ..., 'group_size': ...}}")


def _nnx_attention(m, s, hint=None):
    q, k, o = (_shape(getattr(m, n), "kernel") for n in ("query", "key", "out"))
    return {"in_features": q[0], "num_heads": q[1], "head_dim": q[2], "qkv_features": q[1] * q[2],
            "in_kv_features": k[0], "num_kv_heads": k[1], "out_features": o[-1]}


def _nnx_einsum(m, s, hint=None):
    return {"kernel_shape": _shape(m, "kernel")}


NNX_RULES: dict[type, Callable[[Any, Shapes], dict]] = {
    nnx.Linear: _nnx_linear,
    nnx.LinearGeneral: _nnx_linear_general,
    nnx.Conv: _nnx_conv,
    nnx.ConvTranspose: _nnx_conv_transpose,
    nnx.Embed: _nnx_embed,
    nnx.Einsum: _nnx_einsum,
    nnx.LayerNorm: _nnx_norm,
    nnx.RMSNorm: _nnx_norm,
    nnx.BatchNorm: _nnx_norm,
    nnx.GroupNorm: _nnx_group_norm,
    nnx.MultiHeadAttention: _nnx_attention,
}
"""Size attributes of flax's nnx layers, read from their (already replaced) arrays
(``rule(module, {own leaf: (old, new)}, hint) -> {attribute: value}``)."""


def linen_attention(m: Any, table: Mapping[tuple, Shapes], rel: tuple) -> dict:
    """``MultiHeadDotProductAttention`` owns no params, but checks ``qkv_features % num_heads`` and
    sizes its projections from them: set both from its (shrunk) query kernel, and ``out_features``
    from its out kernel when it was given.

    >>> import flax.linen as nn
    >>> m = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32)
    >>> linen_attention(m, {('query',): {'kernel': ((16, 4, 8), (12, 3, 8))}}, ())
    {'num_heads': 3, 'qkv_features': 24}
    """
    out = {}
    query = table.get(rel + ("query",), {}).get("kernel")
    if query is not None:
        _, heads, dim = query[1][-3:]
        out = {"num_heads": heads, "qkv_features": heads * dim}
    proj = table.get(rel + ("out",), {}).get("kernel")
    if proj is not None and m.out_features is not None:
        out["out_features"] = proj[1][-1]
    return out
