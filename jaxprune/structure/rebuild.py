"""A model of the user's kind that runs with smaller variables.

Given a model, its original variables and a smaller variables tree of the same structure (some axes
shrunk, e.g. by ``Graph.shrink``), :func:`rebuild` returns a model that runs with the same call as the
original: ``model.apply(new_variables, x)`` for linen, ``model(x)`` for nnx.

**linen.** Flax checks every existing param against the shape the module's attributes would give it
(``Scope.param`` evaluates the initialiser and raises ``ScopeParamShapeError`` on a mismatch), so the
size attributes of the modules whose params shrank must change. Modules created inside a ``@compact``
method exist only while the model runs, so they cannot be edited from outside. The rebuilt model is an
instance of a subclass of the user's own class (same name, same fields, ``isinstance`` still holds)
whose methods run the original ones under ``nn.intercept_methods``: before any method of a module that
owns a shrunk param runs, its size attributes are set from the new shapes (by class, see
:data:`LINEN_RULES`; a user module's own int fields by matching the old size). Nothing global is
patched and the interceptor is active only while the rebuilt model runs.

**nnx.** The module is cloned, the smaller arrays replace the old ones (``nnx.update``) and the size
attributes of flax's layers are set from them (:data:`NNX_RULES`); the original module is untouched.

A shape that cannot be mapped to attributes (a user module whose param shape follows from something
other than one of its int fields, two fields with the same value) raises
:class:`~jaxprune.errors.PruningError` naming the module path and the attribute; with
``example_args`` the rebuilt model is also run abstractly (``jax.eval_shape``) so such errors come
from :func:`rebuild`, never later as a wrong model.

>>> import jax, jax.numpy as jnp, flax.linen as nn
>>> class MLP(nn.Module):
...     @nn.compact
...     def __call__(self, x):
...         return nn.Dense(2)(nn.relu(nn.Dense(8)(x)))
>>> model, x = MLP(), jnp.ones((1, 3))
>>> v = model.init(jax.random.key(0), x)
>>> small = {'params': {'Dense_0': {'kernel': v['params']['Dense_0']['kernel'][:, :5],
...                                 'bias': v['params']['Dense_0']['bias'][:5]},
...                     'Dense_1': {'kernel': v['params']['Dense_1']['kernel'][:5],
...                                 'bias': v['params']['Dense_1']['bias']}}}
>>> rebuild(model, v, small, example_args=(x,)).apply(small, x).shape
(1, 2)
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from flax import nnx
from flax.errors import ScopeParamShapeError

from jaxprune.errors import PruningError
from jaxprune.paths import flatten_with_paths

__all__ = ["rebuild", "LINEN_RULES", "NNX_RULES", "changed_shapes"]

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
        f"module '{_linen_path(m)}' ({type(m).__name__}): {old} channels shrank to {new}, which neither "
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


def _rule_for(rules: Mapping[type, Rule], module: Any) -> Optional[Rule]:
    for cls in type(module).__mro__:
        if cls in rules:
            return rules[cls]
    return None


def _field_values(module: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(module):
        names = [f.name for f in dataclasses.fields(module) if f.name not in ("parent", "name")]
    else:
        names = [k for k in vars(module) if not k.startswith("_")]
    return {k: getattr(module, k) for k in names if hasattr(module, k)}


def _user_rule(module: Any, shapes: Shapes, where: str, *, strict: bool) -> dict:
    """Int attributes of a user module set from its own params' new sizes: an attribute whose value is
    the old size of a shrunk axis becomes the new size. Ambiguity is an error; with ``strict`` (linen,
    where flax checks the shapes) so is a shrunk axis no attribute explains."""
    ints = {k: v for k, v in _field_values(module).items()
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool)}
    out: dict[str, int] = {}
    for pname, (old, new) in shapes.items():
        for axis, (a, b) in enumerate(zip(old, new)):
            if a == b:
                continue
            names = sorted(k for k, v in ints.items() if v == a)
            if len(names) != 1:
                what = (f"attributes {names} all equal {a}" if names else
                        f"no int attribute equals {a}")
                if names or strict:
                    raise PruningError(
                        f"module '{where}' ({type(module).__name__}): param '{pname}' axis {axis} shrank "
                        f"{a} -> {b}, but {what}, so its new size cannot be set; pass "
                        f"overrides={{'{where}': {{attribute: value}}}}")
                continue
            name = names[0]
            if out.get(name, b) != b:
                raise PruningError(
                    f"module '{where}' ({type(module).__name__}): attribute '{name}' = {a} would need two "
                    f"new values ({out[name]} and {b}); its params cannot shrink this way")
            out[name] = b
    resized = {ints[k]: k for k in out}
    for pname, (old, new) in shapes.items():
        for axis, (a, b) in enumerate(zip(old, new)):
            if a == b and a in resized:
                name = resized[a]
                raise PruningError(
                    f"module '{where}' ({type(module).__name__}): attribute '{name}' = {a} sizes param "
                    f"'{pname}' axis {axis}, which keeps {a}, and an axis that shrank to {out[name]}")
    return out


def changed_shapes(old: Any, new: Any, *, collection: Optional[str] = None) -> dict[tuple, Shapes]:
    """``{module path: {leaf name: (old shape, new shape)}}`` for each leaf whose shape changed.

    >>> import numpy as np
    >>> changed_shapes({'a': {'w': np.zeros((2, 3))}}, {'a': {'w': np.zeros((2, 1))}})
    {('a',): {'w': ((2, 3), (2, 1))}}
    """
    old_flat, _ = flatten_with_paths(old)
    new_flat, _ = flatten_with_paths(new)
    if [p for p, _ in old_flat] != [p for p, _ in new_flat]:
        missing = sorted({p for p, _ in old_flat} ^ {p for p, _ in new_flat})
        raise PruningError(f"rebuild: the new variables do not have the original's structure "
                           f"(leaves {missing[:3]} differ)")
    out: dict[tuple, dict] = {}
    for (path, a), (_, b) in zip(old_flat, new_flat):
        parts = tuple(path.split("/"))
        if collection is not None:
            if parts[0] != collection:
                continue
            parts = parts[1:]
        sa, sb = tuple(np.shape(a)), tuple(np.shape(b))
        if len(sa) != len(sb):
            raise PruningError(f"rebuild: leaf '{path}' changed rank {sa} -> {sb}; only axes may shrink")
        if any(y > x for x, y in zip(sa, sb)):
            raise PruningError(f"rebuild: leaf '{path}' grew {sa} -> {sb}; only axes may shrink")
        if sa != sb:
            out.setdefault(parts[:-1], {})[parts[-1]] = (sa, sb)
    return out


# ----------------------------------------------------------------------------------------------- linen

def _linen_path(m: Any) -> str:
    return "/".join(m.scope.path) if getattr(m, "scope", None) is not None else "<unbound>"


def _linen_resize(module: Any, table: Mapping[tuple, Shapes], overrides: Mapping[str, Mapping[str, Any]],
                  hints: Mapping[str, Mapping[str, int]], root: tuple, args: tuple) -> None:
    scope = getattr(module, "scope", None)
    if scope is None or tuple(scope.path[:len(root)]) != root:
        return
    rel = tuple(scope.path[len(root):])
    where = "/".join(rel)
    if rel not in table and where not in overrides:
        return
    shapes = table.get(rel, {})
    rule = _rule_for(LINEN_RULES, module)
    if rule is not None:
        attrs = rule(module, shapes, args, hints.get(where, {}))
    else:  # the user's overrides replace the guess for their own module
        attrs = {} if where in overrides else _user_rule(module, shapes, where, strict=True)
    attrs = {**attrs, **overrides.get(where, {})}
    for k, v in attrs.items():
        if not hasattr(module, k):
            raise PruningError(f"module '{where}' ({type(module).__name__}) has no attribute '{k}'")
        # Flax modules are frozen dataclasses; this instance lives only for the current call.
        object.__setattr__(module, k, v)


def _methods(cls: type) -> list[str]:
    names = {"__call__", "setup"}
    for klass in cls.__mro__:
        if klass in (nn.Module, object) or not issubclass(klass, nn.Module):
            continue
        names |= {k for k, v in vars(klass).items()
                  if inspect.isfunction(v) and not k.startswith("_") and k not in nn.Module.__dict__}
    return sorted(n for n in names if callable(getattr(cls, n, None)))


def _linen_subclass(cls: type, table: Mapping[tuple, Shapes], overrides: Mapping[str, Mapping[str, Any]],
                    hints: Mapping[str, Mapping[str, int]]):
    def wrap(name: str, orig: Callable) -> Callable:
        def method(self, *args, **kwargs):
            root = tuple(self.scope.path) if self.scope is not None else ()

            def interceptor(fun, a, kw, context):
                _linen_resize(context.module, table, overrides, hints, root, a)
                return fun(*a, **kw)

            _linen_resize(self, table, overrides, hints, root, args)
            with nn.intercept_methods(interceptor):
                return orig(self, *args, **kwargs)

        method.__name__ = name
        method.__qualname__ = f"{cls.__qualname__}.{name}"
        method.__doc__ = orig.__doc__
        return nn.compact(method) if hasattr(orig, "compact") else method

    namespace = {n: wrap(n, getattr(cls, n)) for n in _methods(cls)}
    # dataclasses reads the class's module from sys.modules; a class made by exec() may have none.
    namespace["__module__"] = cls.__module__ if cls.__module__ in sys.modules else __name__
    namespace["__qualname__"] = cls.__qualname__
    return type(cls.__name__, (cls,), namespace)


def _rebuild_linen(model: nn.Module, variables: Any, new_variables: Any, overrides, hints) -> nn.Module:
    old = variables.get("params", {}) if hasattr(variables, "get") else variables
    new = new_variables.get("params", {}) if hasattr(new_variables, "get") else new_variables
    table = changed_shapes(old, new)
    sub = _linen_subclass(type(model), table, overrides, hints)
    return sub(**{f.name: getattr(model, f.name) for f in dataclasses.fields(model)
                  if f.init and f.name not in ("parent",)})


# ------------------------------------------------------------------------------------------------- nnx

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


def _rebuild_nnx(model: nnx.Module, new_state: Any, overrides, hints) -> nnx.Module:
    table = changed_shapes(nnx.state(model, _filters(new_state)), new_state)
    new_model = nnx.clone(model)
    nnx.update(new_model, new_state)
    changed_modules = {p[:i] for p in table for i in range(len(p) + 1)}
    for path, module in nnx.iter_modules(new_model):
        path = tuple(str(p) for p in path)
        where = "/".join(path)
        rule = _rule_for(NNX_RULES, module)
        shapes = table.get(path, {})
        if rule is not None:
            # Attention's params live in its children, so a rule runs when anything below it changed.
            attrs = rule(module, shapes, hints.get(where, {})) if path in changed_modules else {}
        else:
            attrs = _user_rule(module, shapes, where, strict=False) if shapes and where not in overrides else {}
        attrs = {**attrs, **overrides.get(where, {})}
        for k, v in attrs.items():
            if not hasattr(module, k):
                raise PruningError(f"module '{where}' ({type(module).__name__}) has no attribute '{k}'")
            setattr(module, k, v)
    return new_model


def _filters(state: Any) -> Any:
    """The variable types present in ``state`` (to split the same part out of the original)."""
    types = {type(v) for v in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
             if isinstance(v, nnx.Variable)}
    return tuple(sorted(types, key=lambda t: t.__name__)) or nnx.Param


# ----------------------------------------------------------------------------------------------- entry

def rebuild(model: Any, variables: Any, new_variables: Any, *, example_args: tuple = (),
            example_kwargs: Optional[Mapping[str, Any]] = None,
            overrides: Optional[Mapping[str, Mapping[str, Any]]] = None,
            hints: Optional[Mapping[str, Mapping[str, int]]] = None) -> Any:
    """A model like ``model`` that runs with ``new_variables`` (some axes smaller than in ``variables``).

    * linen: ``model`` a module, ``variables`` its original variables, ``new_variables`` the smaller
      tree; returns a module for ``result.apply(new_variables, ...)`` (an instance of a subclass of
      the user's class).
    * nnx: ``model`` a module, ``variables`` ignored (pass ``None``; the module holds its own),
      ``new_variables`` an ``nnx.State`` with the smaller arrays of some of its variables (e.g.
      ``nnx.state(model, nnx.Param, nnx.BatchStat)`` shrunk); returns a new module, ``model`` is
      untouched.

    ``overrides`` (``{'module/path': {attribute: value}}``) sets attributes the rules cannot infer;
    ``hints`` (``{'module/path': {'groups': n}}``) says how many groups a GroupNorm or grouped conv
    keeps where its channel count alone cannot tell (``prune_structured`` reads them from the graph).
    With ``example_args`` the result is run abstractly once; a shape mismatch raises
    :class:`~jaxprune.errors.PruningError` naming the module.

    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> m = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    >>> s = jax.tree.map(lambda a: a[..., :2], nnx.state(m, nnx.Param))  # 2 of the 4 outputs
    >>> small = rebuild(m, None, s, example_args=(jnp.ones((1, 3)),))
    >>> small.out_features, small(jnp.ones((1, 3))).shape, m.out_features
    (2, (1, 2), 4)
    """
    overrides, hints = dict(overrides or {}), dict(hints or {})
    kwargs = dict(example_kwargs or {})
    if isinstance(model, nn.Module):
        new = _rebuild_linen(model, variables, new_variables, overrides, hints)
        if example_args:
            _check(lambda: jax.eval_shape(lambda v: new.apply(v, *example_args, **kwargs), new_variables))
        return new
    if isinstance(model, nnx.Module):
        new = _rebuild_nnx(model, new_variables, overrides, hints)
        if example_args:
            graphdef, state = nnx.split(new)
            _check(lambda: jax.eval_shape(lambda s: nnx.merge(graphdef, s)(*example_args, **kwargs), state))
        return new
    raise PruningError(f"rebuild: model must be a flax linen or nnx Module, got {type(model).__name__}")


def _check(run: Callable[[], Any]) -> None:
    try:
        run()
    except ScopeParamShapeError as e:
        raise PruningError(f"rebuild: the smaller model does not fit its variables: {e}") from e
    except (TypeError, ValueError) as e:
        if isinstance(e, PruningError):
            raise
        raise PruningError(f"rebuild: the smaller model does not run on the example input: {e}") from e
