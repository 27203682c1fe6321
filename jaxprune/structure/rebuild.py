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
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import numpy as np
from flax import nnx
from flax.errors import FlaxError, ScopeParamShapeError

from jaxprune.errors import PruningError
from jaxprune.paths import flatten_with_paths
from jaxprune.structure.layer_rules import (
    LINEN_RULES,
    NNX_RULES,
    Shapes,
    linen_attention,
    rule_for,
)

__all__ = ["rebuild", "LINEN_RULES", "NNX_RULES", "changed_shapes"]

def _field_values(module: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(module):
        names = [f.name for f in dataclasses.fields(module) if f.name not in ("parent", "name")]
    else:
        names = [k for k in vars(module) if not k.startswith("_")]
    return {k: getattr(module, k) for k in names if hasattr(module, k)}


class _Ambiguous(PruningError):
    """Several int attributes of one module hold the old size of a shrunk axis."""

    def __init__(self, message: str, where: str, names: list[str], new: int) -> None:
        super().__init__(message)
        self.where, self.names, self.new = where, names, new


def _user_rule(module: Any, shapes: Shapes, where: str, *, strict: bool,
               fixed: Mapping[str, Any] = {}) -> dict:  # noqa: B006 - read only
    """Int attributes of a user module set from its own params' new sizes: an attribute whose value is
    the old size of a shrunk axis becomes the new size. Ambiguity is an error (unless ``fixed``, the
    user's overrides for this module, names one of the candidates); with ``strict`` (linen, where flax
    checks the shapes) so is a shrunk axis no attribute explains."""
    ints = {k: v for k, v in _field_values(module).items()
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and k not in fixed}
    resolved = {getattr(module, k) for k in fixed if hasattr(module, k)}
    out: dict[str, int] = {}
    for pname, (old, new) in shapes.items():
        for axis, (a, b) in enumerate(zip(old, new)):
            if a == b:
                continue
            names = sorted(k for k, v in ints.items() if v == a)
            if a in resolved:
                continue
            if len(names) != 1:
                what = (f"attributes {names} all equal {a}" if names else
                        f"no int attribute equals {a}")
                message = (f"module '{where}' ({type(module).__name__}): param '{pname}' axis {axis} shrank "
                           f"{a} -> {b}, but {what}, so its new size cannot be set; pass "
                           f"overrides={{'{where}': {{attribute: value}}}}")
                if names:
                    raise _Ambiguous(message, where, names, b)
                if strict:
                    raise PruningError(message)
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

_DONE = "_jaxprune_resized"


def _linen_resize(module: Any, table: Mapping[tuple, Shapes], overrides: Mapping[str, Mapping[str, Any]],
                  hints: Mapping[str, Mapping[str, int]], root: tuple, args: tuple) -> None:
    scope = getattr(module, "scope", None)
    if scope is None or tuple(scope.path[:len(root)]) != root:
        return
    rel = tuple(scope.path[len(root):])
    where = "/".join(rel)
    if getattr(module, _DONE, False):
        return
    if isinstance(module, nn.MultiHeadDotProductAttention):
        attrs = {**linen_attention(module, table, rel), **overrides.get(where, {})}
    elif rel not in table and where not in overrides:
        return
    else:
        attrs = _rule_attrs(module, table.get(rel, {}), overrides, hints, where, args)
    for k, v in attrs.items():
        if not hasattr(module, k):
            raise PruningError(f"module '{where}' ({type(module).__name__}) has no attribute '{k}'")
        # Flax modules are frozen dataclasses; this instance lives only for the current call.
        object.__setattr__(module, k, v)
    # Rules read the original attributes: a second method call on the same instance must not rerun them.
    object.__setattr__(module, _DONE, True)


def _rule_attrs(module, shapes, overrides, hints, where, args) -> dict:
    rule = rule_for(LINEN_RULES, module)
    if rule is not None:
        attrs = rule(module, shapes, args, hints.get(where, {}))
    else:  # the user's overrides settle what the guess cannot
        attrs = _user_rule(module, shapes, where, strict=True, fixed=overrides.get(where, {}))
    return {**attrs, **overrides.get(where, {})}


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

def _rebuild_nnx(model: nnx.Module, new_state: Any, overrides, hints) -> nnx.Module:
    table = changed_shapes(nnx.state(model, _filters(new_state)), new_state)
    new_model = nnx.clone(model)
    nnx.update(new_model, new_state)
    changed_modules = {p[:i] for p in table for i in range(len(p) + 1)}
    for path, module in nnx.iter_modules(new_model):
        path = tuple(str(p) for p in path)
        where = "/".join(path)
        rule = rule_for(NNX_RULES, module)
        shapes = table.get(path, {})
        if rule is not None:
            # Attention's params live in its children, so a rule runs when anything below it changed.
            attrs = rule(module, shapes, hints.get(where, {})) if path in changed_modules else {}
        else:
            attrs = (_user_rule(module, shapes, where, strict=False, fixed=overrides.get(where, {}))
                     if shapes else {})
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
    if not isinstance(model, (nn.Module, nnx.Module)):
        raise PruningError(f"rebuild: model must be a flax linen or nnx Module, got {type(model).__name__}")
    for _ in range(8):  # each round settles one ambiguous attribute
        try:
            return _build(model, variables, new_variables, example_args, kwargs, overrides, hints)
        except _Ambiguous as err:
            if not example_args:
                raise
            # Try each candidate: the one with which the smaller model fits its variables wins.
            fits = []
            for name in err.names:
                trial = {**overrides, err.where: {**overrides.get(err.where, {}), name: err.new}}
                try:
                    _build(model, variables, new_variables, example_args, kwargs, trial, hints)
                except _Ambiguous:
                    fits.append(trial)  # settled here; a later attribute is still open
                except PruningError:
                    continue
                else:
                    fits.append(trial)
            if len(fits) != 1:
                raise
            overrides = fits[0]
    raise PruningError("rebuild: too many ambiguous attributes; pass overrides=")


def _build(model, variables, new_variables, example_args, kwargs, overrides, hints):
    if isinstance(model, nn.Module):
        new = _rebuild_linen(model, variables, new_variables, overrides, hints)
        if example_args:
            _check(lambda: jax.eval_shape(lambda v: new.apply(v, *example_args, **kwargs), new_variables))
        return new
    new = _rebuild_nnx(model, new_variables, overrides, hints)
    if example_args:
        graphdef, state = nnx.split(new)
        _check(lambda: jax.eval_shape(lambda s: nnx.merge(graphdef, s)(*example_args, **kwargs), state))
    return new


def _check(run: Callable[[], Any]) -> None:
    try:
        run()
    except ScopeParamShapeError as e:
        raise PruningError(f"rebuild: the smaller model does not fit its variables: {e}") from e
    except (TypeError, ValueError, AssertionError, FlaxError) as e:
        if isinstance(e, PruningError):
            raise
        raise PruningError(f"rebuild: the smaller model does not run on the example input ({type(e).__name__}: "
                           f"{e}); a module may decide its structure by comparing a shape with an "
                           "attribute the rebuild did not change") from e
