"""Per-primitive rules: how each jaxpr equation joins, splits or refuses the atoms of its operands.

:func:`walk` applies one rule per equation (atoms in :mod:`jaxprune.structure.graph_atoms`);
primitives without a rule make every class they touch unprunable, naming the primitive, so an unknown
op can cost prunability but never correctness. Calls (``jit``, ``custom_jvp_call`` ...) are followed
into their bodies; ``scan``/``while``/``cond`` are not.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from jax.extend import core as jex_core

from jaxprune.structure.graph_atoms import Atoms, Layout, Trace, Val, fresh
from jaxprune.wiring import call_body

__all__ = ["walk"]


_ELEMENTWISE = frozenset("""
abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp clz complex conj cos cosh
digamma div eq erf erf_inv erfc exp exp2 expm1 floor ge gt igamma imag integer_pow is_finite le lgamma
log log1p logistic lt max min mul ne neg nextafter not or population_count pow real reduce_precision
rem round rsqrt select_n shift_left shift_right_arithmetic shift_right_logical sign sin sinh sqrt
square sub tan tanh xor convert_element_type copy copy_p sharding_constraint
mesh_cast reshard stop_gradient
""".split())
# Ops that keep a parameter a parameter (its axes re-laid out, no arithmetic across entries).
_ADDS = frozenset(("add", "add_any", "sub"))
_RELAYOUT = frozenset("convert_element_type copy copy_p reduce_precision reshape transpose squeeze "
                      "broadcast_in_dim sharding_constraint mesh_cast reshard".split())
_REDUCE = frozenset("reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor "
                    "argmax argmin".split())
_ALONG = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
_SOURCES = frozenset("iota random_bits random_seed random_wrap random_unwrap random_split "
                     "random_fold_in threefry2x32 rng_bit_generator rng_uniform".split())
_INLINE = frozenset("pjit jit closed_call core_call remat checkpoint custom_jvp_call custom_vjp_call "
                    "custom_vjp_call_jaxpr custom_lin".split())


def _flat(layout: Sequence[Layout]) -> list[int]:
    return [a for ax in layout for a in ax]


class _Walker:
    def __init__(self, atoms: Atoms, rec: Trace) -> None:
        self.A, self.rec = atoms, rec

    def refuse(self, vals: Sequence[Val], reason: str) -> None:
        self.A.flag([a for v in vals for a in _flat(v.layout)], reason)

    def join_all(self, layouts: Sequence[Layout], reason: str) -> None:
        for other in layouts[1:]:
            if not self.A.join(layouts[0], other):
                self.A.flag(list(layouts[0]) + list(other), reason)

    def run(self, jaxpr: Any, ins: Sequence[Val]) -> list[Val]:
        jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
        env: dict[Any, Val] = {}
        for var in jaxpr.constvars:
            env[var] = Val(fresh(self.A, var.aval.shape, "constant array"), None)
        for var, val in zip(jaxpr.invars, ins):
            env[var] = val

        def read(v: Any) -> Val:
            if isinstance(v, jex_core.Literal) or v not in env:
                return Val(fresh(self.A, v.aval.shape), None)
            return env[v]

        for eqn in jaxpr.eqns:
            outs = self.eqn(eqn, [read(v) for v in eqn.invars])
            for var, val in zip(eqn.outvars, outs):
                env[var] = val
        return [read(v) for v in jaxpr.outvars]

    def eqn(self, eqn: Any, ins: list[Val]) -> list[Val]:
        name, p = eqn.primitive.name, eqn.params
        shapes = [tuple(v.aval.shape) for v in eqn.invars]
        out_shapes = [tuple(v.aval.shape) for v in eqn.outvars]
        origin = ins[0].origin if ins and name in _RELAYOUT else None
        rule = getattr(self, "r_" + name, None)
        if name in _INLINE and call_body(eqn) is not None:
            return self.run(call_body(eqn), ins)
        if name in _ELEMENTWISE and all(len(s) in (0, len(out_shapes[0])) for s in shapes):
            # Operands may broadcast their size-1 axes: only full-size axes align.
            layout = list(fresh(self.A, out_shapes[0]))
            for axis, n in enumerate(out_shapes[0]):
                full = [v.layout[axis] for v, s in zip(ins, shapes) if len(s) and s[axis] == n]
                if full:
                    self.join_all(full, f"'{name}' mixes units")
                    layout[axis] = full[0]
                    if name in _ADDS and sum(v.origin is None and len(s) and s[axis] == n
                                             for v, s in zip(ins, shapes)) > 1:
                        self.A.mark(list(full[0]), "residual")  # two activations summed
            return [Val(tuple(layout), origin)]
        if name in _SOURCES:
            return [Val(fresh(self.A, s), None) for s in out_shapes]
        if rule is not None:
            out = rule(eqn, ins, shapes, out_shapes, p)
            if out is not None:
                return [Val(lay, origin if i == 0 else None) for i, lay in enumerate(out)]
        kind = "body" if any(hasattr(getattr(v, "jaxpr", v), "eqns") for v in p.values()) else "op"
        reason = f"'{name}' body" if kind == "body" else f"unknown primitive '{name}'"
        self.refuse(ins, reason)
        return [Val(fresh(self.A, s, reason), None) for s in out_shapes]

    # Each rule returns the output layouts, or None to fall back to refusing the equation.

    def r_broadcast_in_dim(self, eqn, ins, shapes, outs, p):
        out = list(fresh(self.A, outs[0]))
        for a, b in enumerate(p["broadcast_dimensions"]):
            if shapes[0][a] == outs[0][b]:
                out[b] = ins[0].layout[a]
        return [tuple(out)]

    def r_reshape(self, eqn, ins, shapes, outs, p):
        if p.get("dimensions") is not None:
            return None
        carved = self.A.carve(_flat(ins[0].layout), outs[0])
        if carved is None:
            self.refuse(ins[:1], "'reshape' mixes units")
            return [fresh(self.A, outs[0], "'reshape' mixes units")]
        return [tuple(carved)]

    def r_squeeze(self, eqn, ins, shapes, outs, p):
        drop = {d % len(shapes[0]) for d in p["dimensions"]}
        return [tuple(ax for i, ax in enumerate(ins[0].layout) if i not in drop)]

    def r_transpose(self, eqn, ins, shapes, outs, p):
        return [tuple(ins[0].layout[a] for a in p["permutation"])]

    def _reduce(self, name, lay, axes):
        kept = [ax for i, ax in enumerate(lay) if i not in axes]
        gone = [a for i, ax in enumerate(lay) if i in axes for a in ax]
        self.rec.reduced.append((name, gone, [a for ax in kept for a in ax]))
        return tuple(kept)

    def _r_reduce(self, eqn, ins, shapes, outs, p):
        name, axes = eqn.primitive.name, set(p["axes"])
        if name in ("argmax", "argmin"):
            self.A.flag([a for i in axes for a in ins[0].layout[i]], f"'{name}' over units")
        return [self._reduce(name, ins[0].layout, axes)]

    def _r_along(self, eqn, ins, shapes, outs, p):
        self.A.flag(list(ins[0].layout[p["axis"]]), f"'{eqn.primitive.name}' along the axis")
        return [ins[0].layout]

    def r_rev(self, eqn, ins, shapes, outs, p):
        self.A.flag([a for d in p["dimensions"] for a in ins[0].layout[d]], "'rev' along the axis")
        return [ins[0].layout]

    def r_dot_general(self, eqn, ins, shapes, outs, p):
        (lc, rc), (lb, rb) = p["dimension_numbers"]
        L, R = ins[0].layout, ins[1].layout
        for a, b in (*zip(lc, rc), *zip(lb, rb)):
            self.join_all([L[a], R[b]], "'dot_general' mixes units")
        lf = [L[i] for i in range(len(L)) if i not in lc and i not in lb]
        rf = [R[i] for i in range(len(R)) if i not in rc and i not in rb]
        out = tuple([L[i] for i in lb] + lf + rf)
        kernels = [(v.origin, free) for v, free in ((ins[0], lf), (ins[1], rf)) if v.origin is not None]
        if len(kernels) == 1:
            self.rec.producers.append((kernels[0][0], _flat(kernels[0][1])))
        elif not kernels:
            self.rec.attention.append(([a for i in lc for a in L[i]], _flat(lf) + _flat(rf),
                                       _flat(out)))
        return [out]

    def r_conv_general_dilated(self, eqn, ins, shapes, outs, p):
        lhs, rhs, out_spec = p["dimension_numbers"]
        if p["batch_group_count"] != 1:
            return None
        L, R = ins[0].layout, ins[1].layout
        g = p["feature_group_count"]
        feat, w_in, w_out = L[lhs[1]], R[rhs[1]], R[rhs[0]]
        if g == 1:
            self.join_all([feat, w_in], "'conv_general_dilated' mixes units")
        else:
            cin, cout = shapes[0][lhs[1]], shapes[1][rhs[0]]
            fa = self.A.carve(feat, [g, cin // g])
            wa = self.A.carve(w_out, [g, cout // g])
            if fa is None or wa is None:
                return None
            self.join_all([fa[0], wa[0]], "grouped 'conv_general_dilated' mixes units")
            self.join_all([fa[1], w_in], "grouped 'conv_general_dilated' mixes units")
            if cin // g > 1:
                self.A.mark(list(fa[0]), "groups")
        if ins[1].origin is not None and ins[0].origin is None:
            self.rec.producers.append((ins[1].origin, list(w_out)))
        self.A.flag([a for d in rhs[2:] for a in R[d]], "convolution window")
        out = list(fresh(self.A, outs[0]))
        for d_in, d_out in zip(lhs[2:], out_spec[2:]):
            self.derive(out[d_out], L[d_in])
        out[out_spec[0]], out[out_spec[1]] = L[lhs[0]], w_out
        return [tuple(out)]

    def r_gather(self, eqn, ins, shapes, outs, p):
        dn, sizes = p["dimension_numbers"], p["slice_sizes"]
        if dn.operand_batching_dims:
            return None
        table, idx = ins[0].layout, ins[1].layout
        kept = [a for a in range(len(table)) if a not in dn.collapsed_slice_dims]
        out = list(fresh(self.A, outs[0]))
        batch = [d for d in range(len(outs[0])) if d not in dn.offset_dims]
        for d, lay in zip(batch, idx[:-1]):
            out[d] = lay
        passed = []
        for a in range(len(table)):
            if a in dn.start_index_map or a in dn.collapsed_slice_dims:
                self.A.flag(list(table[a]), "indexed by 'gather'")
            elif sizes[a] != shapes[0][a]:
                self.A.flag(list(table[a]), "partial 'gather' slice")
        for d, a in zip(dn.offset_dims, kept):
            if a not in dn.start_index_map and sizes[a] == shapes[0][a]:
                out[d] = table[a]
                passed += table[a]
        if ins[0].origin is not None:
            self.rec.producers.append((ins[0].origin, passed))
        return [tuple(out)]

    def _sum_axis(self, lay: Layout, sizes: Sequence[int]) -> Optional[list[tuple]]:
        total = self.A.new(sum(sizes))
        self.A.split(total, "sum", sizes)
        if not self.A.join((total,), lay):
            return None
        return [(k,) if self.A.size[k] > 1 else () for k in self.A.kids[total][1]]

    def r_concatenate(self, eqn, ins, shapes, outs, p):
        d = p["dimension"]
        for axis in range(len(outs[0])):
            if axis != d:
                self.join_all([v.layout[axis] for v in ins], "'concatenate' mixes units")
        total = self.A.new(outs[0][d])
        self.A.split(total, "sum", [s[d] for s in shapes])
        for seg, v in zip(self.A.kids[total][1], ins):
            if not self.A.join((seg,), v.layout[d]):
                self.A.flag([seg, *v.layout[d]], "'concatenate' mixes units")
        out = list(ins[0].layout)
        out[d] = (total,)
        return [tuple(out)]

    def r_split(self, eqn, ins, shapes, outs, p):
        d = p["axis"]
        segs = self._sum_axis(ins[0].layout[d], p["sizes"])
        if segs is None:
            return None
        return [tuple(seg if i == d else ax for i, ax in enumerate(ins[0].layout)) for seg in segs]

    def r_slice(self, eqn, ins, shapes, outs, p):
        out = list(ins[0].layout)
        strides = p["strides"] or (1,) * len(outs[0])
        for d, (lo, hi, st) in enumerate(zip(p["start_indices"], p["limit_indices"], strides)):
            n = shapes[0][d]
            if lo == 0 and hi == n and st == 1:
                continue
            if st != 1:
                self.A.flag(list(out[d]), "strided 'slice'")
                new = fresh(self.A, (outs[0][d],), "strided 'slice'")[0]
                self.derive(new, out[d])
                out[d] = new
                continue
            parts = [s for s in (lo, hi - lo, n - hi) if s]
            segs = self._sum_axis(out[d], parts)
            if segs is None:
                self.A.flag(list(out[d]), "'slice' mixes units")
                out[d] = fresh(self.A, (outs[0][d],), "'slice' mixes units")[0]
            else:
                out[d] = segs[1 if lo else 0]
        return [tuple(out)]

    def derive(self, new: Layout, old: Layout) -> None:
        """A new axis computed from ``old`` (a strided or windowed copy) is input-bound if it is."""
        if any("model input" in self.A.reasons.get(self.A.find(leaf), ())
               for a in old for leaf in self.A.leaves(a)):
            self.A.flag(list(new), "model input")

    def _per_axis(self, ins, shapes, outs, same, reason):
        out = list(ins[0].layout)
        for d, ok in enumerate(same):
            if not ok:
                self.A.flag(list(out[d]), reason)
                new = fresh(self.A, (outs[0][d],), reason)[0]
                self.derive(new, out[d])
                out[d] = new
        return [tuple(out)]

    def r_pad(self, eqn, ins, shapes, outs, p):
        # Padding at the ends makes the axis a sum (pad, operand, pad); the padded units are
        # constants, so they are refused, while the operand's units stay prunable.
        out = list(ins[0].layout)
        for d, (lo, hi, mid) in enumerate(p["padding_config"]):
            if (lo, hi, mid) == (0, 0, 0):
                continue
            if mid or lo < 0 or hi < 0:
                self.A.flag(list(out[d]), "'pad' on the axis")
                out[d] = fresh(self.A, (outs[0][d],), "'pad' on the axis")[0]
                continue
            total = self.A.new(outs[0][d])
            self.A.split(total, "sum", [s for s in (lo, shapes[0][d], hi) if s])
            segs = self.A.kids[total][1]
            if not self.A.join((segs[1 if lo else 0],), out[d]):
                self.A.flag(list(out[d]), "'pad' on the axis")
            self.A.flag([segs[0]] if lo else [], "zero padding")
            self.A.flag([segs[-1]] if hi else [], "zero padding")
            out[d] = (total,)
        return [tuple(out)]

    def r_dynamic_slice(self, eqn, ins, shapes, outs, p):
        same = [a == b for a, b in zip(shapes[0], outs[0])]
        return self._per_axis(ins, shapes, outs, same, "'dynamic_slice' on the axis")

    def r_dynamic_update_slice(self, eqn, ins, shapes, outs, p):
        for d, (a, b) in enumerate(zip(shapes[0], shapes[1])):
            if a == b:
                self.join_all([ins[0].layout[d], ins[1].layout[d]], "'dynamic_update_slice'")
            else:
                self.A.flag([*ins[0].layout[d], *ins[1].layout[d]], "'dynamic_update_slice' on the axis")
        return [ins[0].layout]

    def _r_window(self, eqn, ins, shapes, outs, p):
        same = [w == 1 and s == 1 and tuple(pd) == (0, 0) for w, s, pd in
                zip(p["window_dimensions"], p["window_strides"], p["padding"])]
        return self._per_axis(ins, shapes, outs, same, f"'{eqn.primitive.name}' window on the axis")

    def r_optimization_barrier(self, eqn, ins, shapes, outs, p):
        return [v.layout for v in ins]


for _n in _REDUCE:
    setattr(_Walker, "r_" + _n, _Walker._r_reduce)
for _n in _ALONG:
    setattr(_Walker, "r_" + _n, _Walker._r_along)
for _n in ("reduce_window_sum", "reduce_window_max", "reduce_window_min"):
    setattr(_Walker, "r_" + _n, _Walker._r_window)


def walk(jaxpr: Any, ins: Sequence[Val], atoms: Atoms) -> tuple[list[Val], Trace]:
    """Apply the rules to every equation of ``jaxpr`` (a Jaxpr or ClosedJaxpr) given its inputs.

    >>> import jax, jax.numpy as jnp
    >>> a = Atoms()
    >>> w, x = Val(fresh(a, (3, 4)), 0), Val(fresh(a, (2, 3)), None)
    >>> jp = jax.make_jaxpr(lambda w, x: x @ w)(jnp.ones((3, 4)), jnp.ones((2, 3)))
    >>> outs, rec = walk(jp, [w, x], a)
    >>> a.find(w.layout[0][0]) == a.find(x.layout[1][0]), rec.producers
    (True, [(0, [1])])
    """
    rec = Trace([], [], [])
    return _Walker(atoms, rec).run(jaxpr, list(ins)), rec
