"""One-shot pruning of one linear layer from calibration statistics: magnitude, Wanda, SparseGPT.

Every function takes a flax kernel of layout ``(in, out)`` and returns ``(pruned_kernel, mask)``
(mask: bool, True = kept, the kernel's shape). N:M groups (``nm=(n, m)``: keep ``n`` of every ``m``)
run along the reduction axis, axis 0 of ``(in, out)``; with ``nm`` the pattern fixes the sparsity at
``1 - n/m`` and ``sparsity`` only switches it off (``sparsity == 0`` keeps the layer dense, the kit's
N:M rule). Unstructured counts use the kit's one rounding rule (:func:`jaxprune.counts.num_pruned`):

* ``magnitude_layer(per='row')`` and ``wanda_layer``: exactly ``round(s * in)`` removed per output
  unit (a row of the PyTorch ``(out, in)`` weight, a column of the flax kernel);
* ``magnitude_layer(per='layer')``: exactly ``round(s * in * out)`` removed from the layer;
* ``sparsegpt_layer``: exactly ``round(s * out * b)`` removed from every block of ``b`` input columns
  (``b = blocksize``, the last block may be narrower), the mask of a block chosen jointly over its
  rows as in the paper (Frantar & Alistarh 2023, Alg. 1; the reference code removes one more).
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from jaxprune.counts import check_sparsity_value, num_pruned
from jaxprune.errors import PruningError
from jaxprune.quant import quantize
from jaxprune.select import prune_lowest
from jaxprune.structures import NM

__all__ = ["magnitude_layer", "wanda_layer", "sparsegpt_layer", "check_layer_args"]

NMSpec = Optional[tuple[int, int]]


def check_layer_args(name: str, kernel: Any, sparsity: Any, nm: NMSpec) -> None:
    """Raises :class:`PruningError` naming ``name`` for a non-2-D kernel, a sparsity outside [0, 1]
    or an N:M pattern that does not divide the kernel's input width.

    >>> check_layer_args('fc/kernel', jnp.ones((8, 4)), 0.5, (2, 4))
    """
    shape = tuple(getattr(kernel, "shape", ()))
    if len(shape) != 2:
        raise PruningError(f"{name}: expected a 2-D (in, out) kernel, got shape {shape}")
    check_sparsity_value(sparsity, f"{name}: sparsity")
    if nm is not None:
        if not (isinstance(nm, tuple) and len(nm) == 2):
            raise PruningError(f"{name}: nm must be a pair (n, m), got {nm!r}")
        NM(int(nm[0]), int(nm[1]), axis=0).check(name, shape)


def _row_keep(scores: jax.Array, k: Any) -> jax.Array:
    """Keep-mask of ``(in, out)`` scores removing exactly ``k`` lowest per output column."""
    keep_t = jax.vmap(lambda col: prune_lowest([col], k)[0])(scores.T)
    return keep_t.T


def _select(scores: jax.Array, sparsity: Any, nm: NMSpec, per: str) -> jax.Array:
    n_in, n_out = scores.shape
    if nm is not None:
        return NM(nm[0], nm[1], axis=0).mask("kernel", scores, sparsity)
    if per == "layer":
        return prune_lowest([scores], num_pruned(sparsity, n_in * n_out))[0]
    return _row_keep(scores, num_pruned(sparsity, n_in))


@functools.partial(jax.jit, static_argnames=("nm", "per"))
def _magnitude(kernel, sparsity, nm, per):
    keep = _select(jnp.abs(kernel.astype(jnp.float32)), sparsity, nm, per)
    return jnp.where(keep, kernel, jnp.zeros_like(kernel)), keep


def magnitude_layer(kernel: jax.Array, sparsity: Any, nm: NMSpec = None,
                    per: str = "row") -> tuple[jax.Array, jax.Array]:
    """Prunes the smallest ``|w|``: per output unit (``per='row'``) or over the whole layer.

    >>> k, m = magnitude_layer(jnp.array([[1.0, -4.0], [-3.0, 2.0]]), 0.5)
    >>> k.tolist(), m.tolist()
    ([[0.0, -4.0], [-3.0, 0.0]], [[False, True], [True, False]])
    """
    check_layer_args("magnitude_layer", kernel, sparsity, nm)
    if per not in ("row", "layer"):
        raise PruningError(f"magnitude_layer: per must be 'row' or 'layer', got {per!r}")
    return _magnitude(kernel, sparsity, None if nm is None else tuple(map(int, nm)), per)


@functools.partial(jax.jit, static_argnames=("nm",))
def _wanda(kernel, col_norms_sq, sparsity, nm):
    norms = jnp.sqrt(jnp.maximum(col_norms_sq.astype(jnp.float32), 0.0))
    # Wanda (Sun et al. 2023, eq. 1): S_ij = |W_ij| * ||X_j||_2, compared per output (row of W).
    scores = jnp.abs(kernel.astype(jnp.float32)) * norms[:, None]
    keep = _select(scores, sparsity, nm, "row")
    return jnp.where(keep, kernel, jnp.zeros_like(kernel)), keep


def wanda_layer(kernel: jax.Array, col_norms_sq: jax.Array, sparsity: Any,
                nm: NMSpec = None) -> tuple[jax.Array, jax.Array]:
    """Wanda: prunes the lowest ``|W_ij| * ||X_i||_2`` within each output unit; no weight update.

    ``col_norms_sq[i] = sum over calibration tokens of x_i**2`` (shape ``(in,)``).

    >>> k, m = wanda_layer(jnp.array([[1.0, 1.0], [2.0, 2.0]]), jnp.array([16.0, 1.0]), 0.5)
    >>> m.tolist()
    [[True, True], [False, False]]
    """
    check_layer_args("wanda_layer", kernel, sparsity, nm)
    if tuple(jnp.shape(col_norms_sq)) != (kernel.shape[0],):
        raise PruningError(f"wanda_layer: col_norms_sq must have shape ({kernel.shape[0]},), "
                           f"got {tuple(jnp.shape(col_norms_sq))}")
    return _wanda(kernel, col_norms_sq, sparsity, None if nm is None else tuple(map(int, nm)))


def _block_pass(w1, u1, sparsity, nm, qscale, qmax):
    """SparseGPT inside one block: ``w1`` (rows, b) of W (out, in), ``u1`` the block's (b, b) slice
    of the upper Cholesky factor of H^-1. Returns the pruned block, its keep-mask and the scaled
    errors ``(w - q) / U_ii`` that drive the lazy update of later blocks."""
    rows, b = w1.shape
    d = jnp.diag(u1)
    if nm is None:
        # Mask of the whole block at once from the OBS saliency w^2 / [H^-1]_ii^2 (Alg. 1, line 6);
        # U_ii^2 equals [H^-1]_ii restricted to the remaining columns, the paper's denominator.
        keep0 = prune_lowest([w1**2 / (d**2)[None, :]], num_pruned(sparsity, rows * b))[0]
    else:
        keep0 = jnp.ones_like(w1, dtype=bool)
    n, m = (0, 1) if nm is None else nm
    cols = jnp.arange(b)

    def column(i, carry):
        w1, keep, q1, err1 = carry
        if nm is not None:
            # N:M: the group's mask is chosen when its first column is reached, from the weights as
            # updated by the columns before it (Alg. 1 with mask selection every m columns).
            start = (i // m) * m
            grp = jax.lax.dynamic_slice(w1, (0, start), (rows, m))
            dg = jax.lax.dynamic_slice(d, (start,), (m,))
            gkeep = NM(n, m, axis=1).mask("block", grp**2 / (dg**2)[None, :], sparsity)
            new = jax.lax.dynamic_update_slice(keep, gkeep, (0, start))
            keep = jnp.where(i % m == 0, new, keep)
        w = w1[:, i]
        q = jnp.where(keep[:, i], w, 0.0)
        if qscale is not None:
            # Joint quantization (SparseGPT §4): kept weights are rounded to the fixed per-output grid
            # and the rounding error is compensated by the same OBS update as the pruning error.
            q = jnp.clip(jnp.round(q / qscale), -qmax, qmax) * qscale
        e = (w - q) / d[i]
        # OBS update of the columns after i (Alg. 1, line 11); U is upper triangular, so row i of U
        # is zero before column i and the columns already processed are unchanged.
        w1 = w1 - e[:, None] * jnp.where(cols >= i, u1[i], 0.0)[None, :]
        q1 = q1.at[:, i].set(q)
        err1 = err1.at[:, i].set(e)
        return w1, keep, q1, err1

    init = (w1, keep0, jnp.zeros_like(w1), jnp.zeros_like(w1))
    _, keep, q1, err1 = jax.lax.fori_loop(0, b, column, init)
    return q1, keep, err1


@functools.partial(jax.jit, static_argnames=("nm", "blocksize", "quant_bits"))
def _sparsegpt(kernel, hessian, sparsity, percdamp, nm, blocksize, quant_bits):
    w = kernel.astype(jnp.float32).T  # the paper's (out, in) layout: columns are inputs
    rows, cols = w.shape
    h = hessian.astype(jnp.float32)
    # The per-output quantization grid is fixed from the dense weights before the pass (paper §4).
    qscale = None if quant_bits is None else quantize(kernel.astype(jnp.float32), quant_bits).scale[0]
    qmax = 0 if quant_bits is None else 2 ** (quant_bits - 1) - 1
    dead = jnp.diag(h) == 0
    # A dead input never fires: its weights cannot matter, so zero them and give H a unit diagonal.
    h = jnp.where(jnp.diag(dead), 1.0, h)
    w = jnp.where(dead[None, :], 0.0, w)
    h = h + percdamp * jnp.mean(jnp.diag(h)) * jnp.eye(cols, dtype=h.dtype)
    # Upper factor U with H^-1 = U^T U (its rows are the OBS updates in column order), from ONE
    # Cholesky: with J the reversal, J H J = L L^T gives H^-1 = (J L^-1 J)^T (J L^-1 J), and J L^-1 J
    # is upper triangular with a positive diagonal, so it is the unique factor. This skips forming
    # H^-1 and factoring it again (XLA's CPU Cholesky of a 3072 matrix takes seconds).
    chol_rev = jnp.linalg.cholesky(h[::-1, ::-1])
    inv_rev = jax.scipy.linalg.solve_triangular(chol_rev, jnp.eye(cols, dtype=h.dtype), lower=True)
    u = inv_rev[::-1, ::-1]
    def block(w, keep, i1, b):
        w1 = jax.lax.dynamic_slice(w, (0, i1), (rows, b))
        u1 = jax.lax.dynamic_slice(u, (i1, i1), (b, b))
        q1, k1, err1 = _block_pass(w1, u1, sparsity, nm, qscale, qmax)
        # Lazy batch update of all later columns at once (Alg. 1, line 13). Rows i1..i1+b of U are
        # zero before column i1, and the block itself is overwritten by q1 just after.
        u_rows = jax.lax.dynamic_slice(u, (i1, 0), (b, cols))
        w = w - err1 @ u_rows
        w = jax.lax.dynamic_update_slice(w, q1, (0, i1))
        keep = jax.lax.dynamic_update_slice(keep, k1, (0, i1))
        return w, keep

    keep = jnp.ones((rows, cols), bool)
    full = cols // blocksize
    w, keep = jax.lax.fori_loop(0, full, lambda j, c: block(*c, j * blocksize, blocksize), (w, keep))
    if cols % blocksize:
        w, keep = block(w, keep, full * blocksize, cols % blocksize)
    keep = keep & ~dead[None, :]  # a dead input's weights are zero whatever the mask said
    w = jnp.where(keep, w, 0.0)
    return w.T.astype(kernel.dtype), keep.T


def sparsegpt_layer(kernel: jax.Array, hessian: jax.Array, sparsity: Any, nm: NMSpec = None,
                    blocksize: int = 128, percdamp: float = 0.01,
                    quant_bits: Optional[int] = None) -> tuple[jax.Array, jax.Array]:
    """SparseGPT (Frantar & Alistarh 2023): prune by OBS saliency and update the kept weights.

    ``hessian = sum over calibration tokens of x x^T`` (shape ``(in, in)``, float32). Dampening adds
    ``percdamp * mean(diag H)``; inputs with a zero diagonal are dead (their weights are zeroed and
    count as pruned). Columns are processed in blocks of ``blocksize``; with ``quant_bits`` (8 or 4)
    the kept weights are also quantized to a symmetric per-output grid during the pass (§4).
    One jitted program per shape: ``lax.fori_loop`` over blocks and over the columns of a block.

    >>> k, m = sparsegpt_layer(jnp.array([[1.0, 2.0], [0.1, -3.0]]), jnp.eye(2), 0.5, blocksize=2)
    >>> m.tolist()
    [[False, True], [False, True]]
    """
    check_layer_args("sparsegpt_layer", kernel, sparsity, nm)
    n_in = kernel.shape[0]
    if tuple(jnp.shape(hessian)) != (n_in, n_in):
        raise PruningError(f"sparsegpt_layer: hessian must have shape ({n_in}, {n_in}), "
                           f"got {tuple(jnp.shape(hessian))}")
    if not (isinstance(blocksize, int) and blocksize >= 1):
        raise PruningError(f"sparsegpt_layer: blocksize must be a positive int, got {blocksize!r}")
    if nm is not None and blocksize % int(nm[1]):
        raise PruningError(f"sparsegpt_layer: blocksize={blocksize} must be a multiple of m={nm[1]}")
    if quant_bits is not None and quant_bits not in (2, 3, 4, 5, 6, 7, 8):
        raise PruningError(f"sparsegpt_layer: quant_bits must be in 2..8 or None, got {quant_bits!r}")
    if not (isinstance(percdamp, (int, float)) and percdamp >= 0):
        raise PruningError(f"sparsegpt_layer: percdamp must be a float >= 0, got {percdamp!r}")
    nm = None if nm is None else (int(nm[0]), int(nm[1]))
    return _sparsegpt(kernel, hessian, sparsity, float(percdamp), nm, min(blocksize, n_in), quant_bits)
