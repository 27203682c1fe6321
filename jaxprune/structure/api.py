"""One call for the notebook: trace a model, score its groups, remove units, rebuild the model.

:func:`prune_structured` takes the model the way the user holds it and returns it the same way:

* **linen**: ``(module, variables)`` -> ``(module, variables)``; the module is a subclass of the user's
  class that fits the smaller variables (:func:`~jaxprune.structure.rebuild.rebuild`), called as
  ``module.apply(variables, x)``.
* **nnx**: ``(module, None)`` -> ``(new_module, nnx.state(new_module))``; ``new_module(x)`` runs, the
  original module is untouched, the state is the smaller variables (for checkpoints, optimizers).
* **a plain function** ``f(params, x)``: ``(f, params)`` -> ``(jax.jit(f), smaller_params)``.

The steps are public too: :func:`structured_plan` (trace + scores + selection ->
:class:`StructuredPlan`), :func:`apply_plan` (shrink + rebuild + check) and
:func:`shrink_like` (an optax state, or any tree holding params-shaped subtrees, shrunk the same way).
After rebuilding, the smaller model is traced again and every leaf axis must carry groups of exactly
the kept sizes: a user module that reshapes by an attribute the rebuild could not see (``(T, 4, -1)``
with one of four heads gone) is refused instead of returned as a wrong model.

>>> import jax, jax.numpy as jnp, flax.linen as nn
>>> class MLP(nn.Module):
...     @nn.compact
...     def __call__(self, x):
...         return nn.Dense(3, name='out')(nn.relu(nn.Dense(16, name='fc')(x)))
>>> x = jnp.ones((2, 5))
>>> model, v = prune_structured(MLP(), MLP().init(jax.random.key(0), x), x, 0.5)
>>> v['params']['fc']['kernel'].shape, model.apply(v, x).shape
((5, 8), (2, 3))
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from flax import nnx

from jaxprune.errors import PruningError
from jaxprune.neurons import CRITERIA, collect_activation_stats, get_criterion
from jaxprune.paths import flatten_with_paths
from jaxprune.structure.graph import Graph, trace, trace_linen, trace_nnx
from jaxprune.structure.importance import (
    WEIGHT_CRITERIA,
    activation_group_scores,
    group_scores,
    producer_layers,
    select_units,
)
from jaxprune.structure.rebuild import rebuild

__all__ = ["StructuredPlan", "structured_plan", "apply_plan", "prune_structured", "shrink_like",
           "kept_shapes", "attention_dims"]


class StructuredPlan(NamedTuple):
    """What :func:`structured_plan` decided: the traced graph, the per-group scores and the kept
    units (``{group id: (size,) bool}``), and the model kind (``'linen'``, ``'nnx'``, ``'function'``)."""

    graph: Graph
    scores: Mapping[int, np.ndarray]
    keep: Mapping[int, np.ndarray]
    kind: str


def _kind(model: Any, variables: Any) -> str:
    if isinstance(model, nn.Module):
        if variables is None:
            raise PruningError("prune_structured: a linen module needs its variables, got None")
        return "linen"
    if isinstance(model, nnx.Module):
        if variables is not None:
            raise PruningError("prune_structured: an nnx module carries its own state; pass variables=None")
        return "nnx"
    if callable(model):
        if variables is None:
            raise PruningError("prune_structured: a function f(params, x) needs its params, got None")
        return "function"
    raise PruningError(f"prune_structured: model must be a linen/nnx Module or a function f(params, x), "
                       f"got {type(model).__name__}")


def _args(example_input: Any) -> tuple:
    return tuple(example_input) if isinstance(example_input, tuple) else (example_input,)


def _trace(kind: str, model: Any, variables: Any, args: tuple, kwargs: Mapping) -> tuple[Graph, Any]:
    if kind == "linen":
        return trace_linen(model, variables, *args, **kwargs), variables
    if kind == "nnx":
        return trace_nnx(model, *args), nnx.split(model)[1]
    return trace(model, variables, *args), variables


def _trainable(kind: str, model: Any, tree: Any) -> Callable[[str], bool]:
    """Which member leaves weigh in a magnitude (not BN running statistics)."""
    if kind == "linen":
        return lambda p: p.startswith("params/")
    if kind == "nnx":
        names = {p for p, _ in flatten_with_paths(nnx.state(model, nnx.Param))[0]}
        return names.__contains__
    return lambda p: True


def _grads(kind: str, model: Any, tree: Any, loss_fn: Callable, batch: Any) -> Any:
    if kind == "linen":
        g = jax.grad(lambda p: loss_fn({**tree, "params": p}, batch))(tree["params"])
        return {"params": g}
    if kind == "nnx":
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        return jax.grad(lambda p: loss_fn(nnx.merge(graphdef, p, rest), batch))(params)
    return jax.grad(lambda p: loss_fn(p, batch))(tree)


def structured_plan(model: Any, variables: Any, example_input: Any, sparsity: float,
                    importance: Any = "l2", ignore: Sequence[str] = (), round_to: Optional[int] = None,
                    global_: bool = False, *, min_keep: int = 1, loss_fn: Optional[Callable] = None,
                    batch: Any = None, grads: Any = None, batches: Any = None,
                    key: Optional[jax.Array] = None, head_dim: bool = False,
                    apply_kwargs: Optional[Mapping[str, Any]] = None) -> StructuredPlan:
    """Trace, score and select: which units of which groups go (nothing is shrunk yet).

    ``importance``: ``'l1'``, ``'l2'``, ``'taylor'`` (``grads=`` or ``loss_fn`` + ``batch``; the loss
    gets linen variables, the nnx module, or the function's params, and the batch), ``'random'``
    (``key=``), an activation criterion of :data:`jaxprune.neurons.CRITERIA` (``entropy``, ``apoz``,
    ``hoyer``, ``stability``, ``variance``; measured on ``batches``, default the example input), or a
    callable ``(graph, variables) -> {group id: scores}``.

    Attention loses whole heads (:func:`attention_dims`); head_dim groups are kept unless
    ``head_dim=True``: flax's
    attention scales the logits by ``1/sqrt(head_dim)`` read from the shape (a narrower q·k changes
    the softmax temperature, so the shrunk model would differ from the masked one), and
    ``jax.nn.dot_product_attention`` wants the values' head_dim equal to the queries'.

    >>> import jax.numpy as jnp
    >>> f = lambda p, x: jnp.tanh(x @ p['a']) @ p['b']
    >>> p = {'a': jnp.arange(8.0).reshape(2, 4), 'b': jnp.ones((4, 1))}
    >>> plan = structured_plan(f, p, jnp.ones((1, 2)), 0.5)
    >>> [k.tolist() for k in plan.keep.values()]
    [[False, False, True, True]]
    """
    kind = _kind(model, variables)
    args, kwargs = _args(example_input), dict(apply_kwargs or {})
    if kind != "linen" and kwargs:
        raise PruningError("prune_structured: apply_kwargs are for linen modules (model.apply(v, x, **kw))")
    graph, tree = _trace(kind, model, variables, args, kwargs)
    if callable(importance) and not isinstance(importance, str):
        scores = dict(importance(graph, tree))
    elif importance in WEIGHT_CRITERIA:
        if importance == "taylor" and grads is None:
            if loss_fn is None or batch is None:
                raise PruningError("prune_structured: importance='taylor' needs grads= or loss_fn= and batch=")
            grads = _grads(kind, model, tree, loss_fn, batch)
        scores = group_scores(graph, tree, importance, grads=grads, key=key,
                              include=_trainable(kind, model, tree))
    elif importance in CRITERIA:
        if kind == "function":
            raise PruningError(f"prune_structured: activation criterion {importance!r} taps module "
                               "outputs; a plain function has none (use l1/l2/taylor/random)")
        layers = sorted({layer for g in graph.groups if g.prunable for layer in producer_layers(g)})
        stats = collect_activation_stats(model, variables, batches if batches is not None else [args[0]],
                                         layers=layers, **kwargs)
        scores = activation_group_scores(graph, get_criterion(importance)(stats=stats))
    else:
        raise PruningError(f"prune_structured: unknown importance {importance!r}; known: "
                           f"{sorted(set(WEIGHT_CRITERIA) | set(CRITERIA))} or a callable")
    skip = () if head_dim else attention_dims(graph)
    keep = select_units(graph, scores, sparsity, global_=global_, round_to=round_to, min_keep=min_keep,
                        ignore=ignore, skip=skip)
    return StructuredPlan(graph, scores, keep, kind)


def attention_dims(graph: Graph) -> tuple[int, ...]:
    """Ids of the attention groups that are not whole heads: a head is produced by the query, key
    and value projections together; a ``heads``/``head_dim`` group with fewer producers is the
    head_dim of q·k (two) or of the values (one).

    >>> import jax.numpy as jnp
    >>> p = {n: {'kernel': jnp.ones((4, 2, 3))} for n in ('q', 'k', 'v')}
    >>> p['o'] = {'kernel': jnp.ones((2, 3, 4))}
    >>> def f(p, x):
    ...     q, k, v = (jnp.einsum('tc,chd->thd', x, p[n]['kernel']) for n in 'qkv')
    ...     a = jax.nn.softmax(jnp.einsum('thd,shd->hts', q, k), axis=-1)
    ...     return jnp.einsum('hts,shd,hdc->tc', a, v, p['o']['kernel'])
    >>> g = trace(f, p, jnp.ones((5, 4)))
    >>> sorted(len(g.groups[i].producers) for i in attention_dims(g))
    [1, 2]
    """
    return tuple(g.id for g in graph.groups
                 if g.kind in ("heads", "head_dim") and len(set(g.producers)) < 3)


def _module_path(leaf_path: str) -> str:
    parts = leaf_path.split("/")[:-1]
    return "/".join(parts[1:] if parts[:1] == ["params"] else parts)


def _hints(plan: StructuredPlan) -> dict[str, dict[str, int]]:
    """How many groups each GroupNorm keeps (its channel count alone cannot say)."""
    out: dict[str, dict[str, int]] = {}
    for g in plan.graph.groups:
        if g.kind != "groups":
            continue
        kept = int(np.sum(plan.keep[g.id])) if g.id in plan.keep else g.size
        for m in g.members:
            if len(plan.graph.shapes[m.path]) == 1 and m.path.rsplit("/", 1)[-1] in ("scale", "bias"):
                out[_module_path(m.path)] = {"groups": kept}
    return out


def kept_shapes(plan: StructuredPlan) -> dict[str, tuple[int, ...]]:
    """``{leaf path: shape}`` after the plan's units are removed, from the group sizes alone.

    >>> import jax.numpy as jnp
    >>> f = lambda p, x: jnp.tanh(x @ p['a']) @ p['b']
    >>> p = {'a': jnp.ones((2, 4)), 'b': jnp.ones((4, 1))}
    >>> kept_shapes(structured_plan(f, p, jnp.ones((1, 2)), 0.5))
    {'a': (2, 2), 'b': (2, 1)}
    """
    shapes = {p: list(s) for p, s in plan.graph.shapes.items()}
    gone: dict[tuple[str, int], set] = {}
    for g in plan.graph.groups:
        mask = np.asarray(plan.keep.get(g.id, np.ones(g.size, bool)), bool)
        for m in g.members:
            gone.setdefault((m.path, m.axis), set()).update(m.unit_indices(np.flatnonzero(~mask)).tolist())
    for (path, axis), idx in gone.items():
        shapes[path][axis] -= len(idx)
    return {p: tuple(s) for p, s in shapes.items()}


def _partitions(graph: Graph, keep: Optional[Mapping[int, np.ndarray]] = None
                ) -> dict[tuple[str, int], list[tuple]]:
    """Per leaf axis, each group's units as index sets: ``[((i, j, ...), ...), ...]``, sorted.

    With ``keep``, the kept units of the old graph, renumbered to the positions they take once every
    removed index of the axis is gone (what the rebuilt model's own trace must show)."""
    kept_on: dict[tuple[str, int], np.ndarray] = {}
    if keep is not None:
        for g in graph.groups:
            mask = np.asarray(keep.get(g.id, np.ones(g.size, bool)), bool)
            for m in g.members:
                idx = graph.indices(m, mask)
                where = (m.path, m.axis)
                kept_on[where] = idx if where not in kept_on else np.intersect1d(kept_on[where], idx)
    out: dict[tuple[str, int], list[tuple]] = {}
    for g in graph.groups:
        units = np.arange(g.size)
        if keep is not None:
            units = np.flatnonzero(np.asarray(keep.get(g.id, np.ones(g.size, bool)), bool))
        if len(units) < 2:
            continue  # a group of one unit is no group once rebuilt
        for m in g.members:
            where = (m.path, m.axis)
            rows = []
            for u in units:
                idx = m.unit_indices([u])
                if keep is not None:
                    idx = np.searchsorted(kept_on[where], np.intersect1d(idx, kept_on[where]))
                rows.append(tuple(int(i) for i in idx))
            out.setdefault(where, []).append(tuple(rows))
    return {k: sorted(v) for k, v in out.items()}


def _check_regrouped(plan: StructuredPlan, new_graph: Graph) -> None:
    want, got = _partitions(plan.graph, plan.keep), _partitions(new_graph)
    for where, parts in want.items():
        if got.get(where, []) != parts:
            sizes = sorted(len(p) for p in got.get(where, []))
            raise PruningError(
                f"prune_structured: the rebuilt model does not lay out the kept units of leaf '{where[0]}' "
                f"axis {where[1]} as the pruned model does (its units: {sizes}, expected "
                f"{sorted(len(p) for p in parts)}): some module decides a shape by an attribute the "
                "rebuild cannot see (e.g. a reshape to a fixed head count); pass "
                "overrides={'module/path': {attribute: value}}")


def apply_plan(plan: StructuredPlan, model: Any, variables: Any, example_input: Any, *,
               overrides: Optional[Mapping[str, Mapping[str, Any]]] = None,
               apply_kwargs: Optional[Mapping[str, Any]] = None, check: bool = True) -> tuple[Any, Any]:
    """Shrink and rebuild: ``(model, variables)`` as :func:`prune_structured` returns them.

    >>> import jax.numpy as jnp
    >>> f = lambda p, x: jnp.tanh(x @ p['a']) @ p['b']
    >>> p, x = {'a': jnp.ones((2, 4)), 'b': jnp.ones((4, 1))}, jnp.ones((1, 2))
    >>> g, small = apply_plan(structured_plan(f, p, x, 0.25), f, p, x)
    >>> small['a'].shape, g(small, x).shape
    ((2, 3), (1, 1))
    """
    args, kwargs = _args(example_input), dict(apply_kwargs or {})
    kind = plan.kind
    if kind == "linen":
        new_vars = plan.graph.shrink(variables, plan.keep)
        new_model = rebuild(model, variables, new_vars, example_args=args, example_kwargs=kwargs,
                            overrides=overrides, hints=_hints(plan))
        if check:
            _check_regrouped(plan, trace_linen(new_model, new_vars, *args, **kwargs))
        return new_model, new_vars
    if kind == "nnx":
        state = nnx.split(model)[1]
        new_model = rebuild(model, None, plan.graph.shrink(state, plan.keep), example_args=args,
                            overrides=overrides, hints=_hints(plan))
        if check:
            _check_regrouped(plan, trace_nnx(new_model, *args))
        return new_model, nnx.state(new_model)
    new_params = plan.graph.shrink(variables, plan.keep)
    if check:
        _check_regrouped(plan, trace(model, new_params, *args))
    return jax.jit(model), new_params


def prune_structured(model: Any, variables: Any, example_input: Any, sparsity: float,
                     importance: Any = "l2", ignore: Sequence[str] = (), round_to: Optional[int] = None,
                     global_: bool = False, **kw: Any) -> tuple[Any, Any]:
    """Remove ``sparsity`` of every prunable group's units and return the smaller model.

    Layerwise by default: each group of ``n`` units loses ``round_half_even(sparsity * n)`` (never all);
    ``global_=True`` ranks all units together after dividing each group's scores by their mean.
    ``ignore`` (layer globs, e.g. ``'head'``, ``'*/attn/*'``) keeps the units those layers produce;
    ``round_to=k`` keeps multiples of ``k``. Model outputs and inputs are never pruned. Other keywords go
    to :func:`structured_plan` (``min_keep``, ``loss_fn``, ``batch``, ``grads``, ``batches``, ``key``,
    ``apply_kwargs``) and :func:`apply_plan` (``overrides``, ``check``). See the module docstring for
    what comes back for linen, nnx and plain functions.

    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> class MLP(nnx.Module):
    ...     def __init__(self, rngs):
    ...         self.a, self.b = nnx.Linear(3, 8, rngs=rngs), nnx.Linear(8, 2, rngs=rngs)
    ...     def __call__(self, x):
    ...         return self.b(nnx.relu(self.a(x)))
    >>> small, state = prune_structured(MLP(nnx.Rngs(0)), None, jnp.ones((1, 3)), 0.25)
    >>> small.a.out_features, small(jnp.ones((1, 3))).shape
    (6, (1, 2))
    """
    apply_keys = {"overrides", "check"}
    plan_kw = {k: v for k, v in kw.items() if k not in apply_keys}
    plan = structured_plan(model, variables, example_input, sparsity, importance, ignore, round_to,
                           global_, **plan_kw)
    return apply_plan(plan, model, variables, example_input,
                      apply_kwargs=kw.get("apply_kwargs"), **{k: kw[k] for k in apply_keys if k in kw})


def shrink_like(plan: StructuredPlan, tree: Any, params: Any) -> Any:
    """``tree`` with every subtree structured like ``params`` shrunk as the plan shrinks the params
    (an optax state's ``mu``/``nu``/traces); other leaves (step counts) are kept.

    ``params`` is the tree the optimizer was built on: linen ``variables['params']`` (or the whole
    variables), an ``nnx.State`` of the module's params, or a function's params.

    >>> import jax, jax.numpy as jnp, optax
    >>> f = lambda p, x: jnp.tanh(x @ p['a']) @ p['b']
    >>> p, x = {'a': jnp.ones((2, 4)), 'b': jnp.ones((4, 1))}, jnp.ones((1, 2))
    >>> plan = structured_plan(f, p, x, 0.5)
    >>> state = shrink_like(plan, optax.adam(1e-3).init(p), p)
    >>> state[0].mu['a'].shape, state[0].count.shape
    ((2, 2), ())
    """
    treedef = jax.tree.structure(params)
    leaf_paths = {p for p, _ in flatten_with_paths(params)[0]}
    graph_paths = set(plan.graph.shapes)
    if leaf_paths <= graph_paths:
        wrap, unwrap = (lambda t: t), (lambda t: t)
    elif {f"params/{p}" for p in leaf_paths} <= graph_paths:
        wrap, unwrap = (lambda t: {"params": t}), (lambda t: t["params"])
    else:
        raise PruningError("shrink_like: params' leaf paths are not the traced model's (pass the tree the "
                           "optimizer was built on)")

    def is_params(x: Any) -> bool:
        try:
            return jax.tree.structure(x) == treedef
        except Exception:  # noqa: BLE001 - a node jax cannot flatten is simply not params-shaped
            return False

    return jax.tree.map(lambda sub: unwrap(plan.graph.shrink(wrap(sub), plan.keep)) if is_params(sub)
                        else sub, tree, is_leaf=is_params)
