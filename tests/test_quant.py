"""Tests for jaxprune.quant: quantization, fake quant (STE), mixed precision, size accounting, sparse MLP."""

import gzip

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.experimental import sparse

from jaxprune.errors import PruningError
from jaxprune.quant import (
    FORMATS,
    LossScale,
    Policy,
    QuantizedArray,
    adjust_loss_scale,
    dequantize,
    fake_quant,
    fake_quant_tree,
    format_size_report,
    get_policy,
    grads_finite,
    init_loss_scale,
    quantize,
    scale_loss,
    size_report,
    sparse_mlp_apply,
    to_bcoo,
    to_bcsr,
    unscale_grads,
)


def _prune(w, sparsity):
    """Exact magnitude pruning of a numpy array: zero the round(s*n) smallest |w|."""
    w = np.array(w, np.float32)
    k = int(round(sparsity * w.size))
    if k:
        w.ravel()[np.argpartition(np.abs(w).ravel(), k - 1)[:k]] = 0.0
    return w


def _mlp_params(sparsity, sizes=(20, 16, 12, 5), seed=0):
    rng = np.random.default_rng(seed)
    layers = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers[f"Dense_{i}"] = {"kernel": _prune(rng.standard_normal((a, b)), sparsity),
                                "bias": rng.standard_normal(b).astype(np.float32)}
    return {"params": layers}


# ---------------------------------------------------------------- quantize / dequantize


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_round_trip_error_within_half_scale_and_zeros_kept(bits, granularity):
    params = _mlp_params(0.7)
    q = quantize(params, bits, granularity=granularity)
    back = dequantize(q)
    chex.assert_trees_all_equal_structs(back, params)
    for name, layer in params["params"].items():
        qa, w = q["params"][name]["kernel"], layer["kernel"]
        assert isinstance(qa, QuantizedArray) and qa.values.dtype == jnp.int8
        expected_scale_shape = (1, w.shape[1]) if granularity == "per_channel" else (1, 1)
        assert qa.scale.shape == expected_scale_shape and qa.scale.dtype == jnp.float32
        deq = np.asarray(back["params"][name]["kernel"])
        assert deq.dtype == np.float32
        scale = np.broadcast_to(np.asarray(qa.scale), w.shape)
        # float32 rounding of w / scale may land a hair past the .5 boundary.
        assert np.all(np.abs(deq - w) <= scale * (0.5 + 1e-5)), name
        np.testing.assert_array_equal(deq[w == 0], 0.0)
        # Biases are not selected by default and pass through untouched.
        np.testing.assert_array_equal(back["params"][name]["bias"], layer["bias"])


@pytest.mark.parametrize("bits", [8, 4, 3])
def test_per_channel_levels_and_range(bits):
    w = _prune(np.random.default_rng(1).standard_normal((64, 6)), 0.5)
    qa = quantize(w, bits)
    values = np.asarray(qa.values)
    qmax = 2 ** (bits - 1) - 1
    assert values.min() >= -qmax and values.max() <= qmax
    for c in range(w.shape[1]):
        assert len(np.unique(values[:, c])) <= 2**bits - 1
        assert np.abs(values[:, c]).max() == qmax  # the channel's max maps to the end of the range
    assert qa.packed_nbytes == int(np.ceil(w.size * bits / 8))


def test_int4_values_stored_in_int8_range():
    qa = quantize(jnp.linspace(-3.0, 3.0, 40).reshape(8, 5), 4)
    assert qa.values.dtype == jnp.int8 and qa.bits == 4 and qa.packed_nbytes == 20
    assert set(np.unique(qa.values)).issubset(set(range(-7, 8)))


def test_all_zero_channel_has_finite_scale():
    w = np.zeros((5, 3), np.float32)
    w[:, 1] = [1.0, -2.0, 0.0, 0.5, 3.0]
    qa = quantize(w, 8)
    assert np.isfinite(np.asarray(qa.scale)).all()
    np.testing.assert_array_equal(np.asarray(qa.values)[:, [0, 2]], 0)
    np.testing.assert_array_equal(np.asarray(dequantize(qa))[:, [0, 2]], 0.0)
    assert np.isfinite(np.asarray(dequantize(quantize(np.zeros((3, 3), np.float32))))).all()


def test_nan_and_inf_errors_name_the_leaf():
    params = _mlp_params(0.5)
    params["params"]["Dense_1"]["kernel"][2, 3] = np.nan
    with pytest.raises(PruningError, match="params/Dense_1/kernel"):
        quantize(params)
    params["params"]["Dense_1"]["kernel"][2, 3] = np.inf
    with pytest.raises(PruningError, match="params/Dense_1/kernel"):
        fake_quant_tree(params)
    # A NaN in an unselected leaf (a bias) is not our business.
    clean = _mlp_params(0.5)
    clean["params"]["Dense_0"]["bias"][0] = np.nan
    quantize(clean)


def test_nnx_state_paths_drop_value():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    model.kernel[...] = model.kernel[...].at[0, 0].set(jnp.nan)
    state = nnx.state(model, nnx.Param)
    with pytest.raises(PruningError, match=r"kernel: 1 non-finite") as err:
        quantize(state)
    assert str(err.value).startswith("kernel: ")  # not "kernel/value: "
    ok = quantize(nnx.state(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), nnx.Param))
    chex.assert_trees_all_equal_structs(dequantize(ok), nnx.state(model, nnx.Param))


@pytest.mark.parametrize("bits", [1, 9, 0, 16, 8.0, True, "8"])
def test_bad_bits(bits):
    with pytest.raises(PruningError, match="bits"):
        quantize({"w": np.ones((2, 2), np.float32)}, bits)
    with pytest.raises(PruningError, match="bits"):
        fake_quant(jnp.ones((2, 2)), bits)


def test_bad_granularity_axis_and_dtype():
    tree = {"params": {"Dense_0": {"kernel": np.ones((2, 2), np.float32)}}}
    with pytest.raises(PruningError, match="granularity"):
        quantize(tree, granularity="per_row")
    with pytest.raises(PruningError, match="params/Dense_0/kernel: axis 2"):
        quantize(tree, axis=2)
    with pytest.raises(PruningError, match="only floating"):
        quantize({"ids": np.ones((2, 2), np.int32)}, include=lambda path, leaf: True)


def test_quantize_custom_include_axis_and_jit():
    params = _mlp_params(0.5)
    only_first = quantize(params, include=lambda path, leaf: path == "params/Dense_0/kernel")
    assert isinstance(only_first["params"]["Dense_0"]["kernel"], QuantizedArray)
    assert not isinstance(only_first["params"]["Dense_1"]["kernel"], QuantizedArray)
    rows = quantize(params, axis=0)["params"]["Dense_0"]["kernel"]
    assert rows.scale.shape == (20, 1) and rows.axis == 0
    jitted = jax.jit(lambda p: dequantize(quantize(p, 4)))(params)
    eager = dequantize(quantize(params, 4))
    chex.assert_trees_all_close(jitted, eager)
    # Quantizing an already quantized tree leaves the QuantizedArray nodes alone.
    again = quantize(quantize(params))
    chex.assert_trees_all_equal(dequantize(again), dequantize(quantize(params)))


# A few fixed shapes keep compilation (not the property) from dominating the run time.
@given(hnp.arrays(np.float32, st.sampled_from([(5, 3), (2, 3, 4), (1, 7)]),
                  elements=st.one_of(st.just(0.0), st.floats(-1e4, 1e4, width=32,
                                                             allow_subnormal=False))),
       st.sampled_from([2, 4, 8]))
def test_property_sign_and_zero_pattern(w, bits):
    qa = quantize(w, bits)
    values = np.asarray(qa.values)
    assert np.all(values[w == 0] == 0)
    # Rounding may send a tiny weight to 0, but never flips a sign.
    assert np.all((np.sign(values) == np.sign(w)) | (values == 0))
    deq = np.asarray(dequantize(qa))
    assert np.all(np.abs(deq - w) <= np.asarray(qa.scale) * (0.5 + 1e-5) + 1e-30)


# ---------------------------------------------------------------- fake quant (QAT)


def test_fake_quant_forward_and_straight_through_gradient():
    w = jnp.asarray(_prune(np.random.default_rng(2).standard_normal((32, 4)), 0.6))
    c = jnp.asarray(np.random.default_rng(3).standard_normal((32, 4)).astype(np.float32))
    out = fake_quant(w, 4)
    np.testing.assert_array_equal(out, dequantize(quantize(w, 4)))
    np.testing.assert_array_equal(np.asarray(out)[np.asarray(w) == 0], 0.0)
    for col in np.asarray(out).T:
        assert len(np.unique(col)) <= 2**4 - 1
    grad = jax.jit(jax.grad(lambda w: jnp.sum(fake_quant(w, 4) * c)))(w)
    np.testing.assert_array_equal(grad, jax.grad(lambda w: jnp.sum(w * c))(w))
    # Forward mode goes through the same straight-through rule.
    _, tangent = jax.jvp(lambda w: fake_quant(w, 8, None), (w,), (c,))
    np.testing.assert_array_equal(tangent, c)


def test_fake_quant_tree_keeps_structure_dtype_and_masks():
    params = _mlp_params(0.8)
    params["params"]["Dense_2"]["kernel"] = params["params"]["Dense_2"]["kernel"].astype(jnp.bfloat16)
    out = jax.jit(lambda p: fake_quant_tree(p, 8))(params)
    chex.assert_trees_all_equal_structs(out, params)
    chex.assert_trees_all_equal_dtypes(out, jax.tree.map(jnp.asarray, params))
    for name, layer in params["params"].items():
        k = np.asarray(layer["kernel"], np.float32)
        np.testing.assert_array_equal(np.asarray(out["params"][name]["kernel"], np.float32)[k == 0], 0)
        np.testing.assert_array_equal(out["params"][name]["bias"], layer["bias"])
    grads = jax.grad(lambda p: sum(jnp.sum(x) for x in jax.tree.leaves(fake_quant_tree(p, 4))))(
        jax.tree.map(jnp.asarray, _mlp_params(0.5)))
    for g in jax.tree.leaves(grads):
        np.testing.assert_array_equal(g, np.ones(g.shape, np.float32))


# ---------------------------------------------------------------- mixed precision


@pytest.mark.parametrize("name", ["bf16", "f16"])
def test_cast_keeps_exact_zeros_and_masks(name):
    params = _mlp_params(0.9)
    masks = jax.tree.map(lambda x: x != 0, params)
    policy = get_policy(name)
    compute = policy.cast_to_compute({"params": params, "masks": masks})
    assert compute["params"]["params"]["Dense_0"]["kernel"].dtype == policy.compute_dtype
    chex.assert_trees_all_equal(compute["masks"], masks)  # bool leaves are never cast
    back = policy.cast_to_param(compute["params"])
    for k, m in zip(jax.tree.leaves(back), jax.tree.leaves(masks)):
        assert k.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(k) != 0, m)
    assert policy.cast_to_output(jnp.ones(2, policy.compute_dtype)).dtype == jnp.float32


def test_get_policy_parsing_and_errors():
    assert get_policy("f32") == Policy(jnp.float32, jnp.float32, jnp.float32)
    assert get_policy("bf16") == Policy(jnp.float32, jnp.bfloat16, jnp.float32)
    assert get_policy("params=f16, compute=f16, output=f32") == Policy(jnp.float16, jnp.float16,
                                                                        jnp.float32)
    for bad in ["fp8", "p=f32,x=f16", "c=int8", 16]:
        with pytest.raises(PruningError, match="policy"):
            get_policy(bad)


def test_loss_scale_state_machine():
    state = init_loss_scale(2.0**10)
    bad = {"w": jnp.array([1.0, jnp.inf]), "b": jnp.ones(2)}
    good = {"w": jnp.ones(2), "b": jnp.ones(2), "mask": jnp.array([True, False])}
    assert not bool(grads_finite(bad)) and bool(grads_finite(good))
    assert not bool(grads_finite({"w": jnp.array([jnp.nan], jnp.float16)}))

    step = jax.jit(lambda s, g: adjust_loss_scale(s, grads_finite(g), period=3))
    state = step(state, bad)
    assert isinstance(state, LossScale)
    assert float(state.scale) == 2.0**9 and int(state.counter) == 0
    state = step(step(state, good), good)
    assert float(state.scale) == 2.0**9 and int(state.counter) == 2
    state = step(state, good)  # third finite step in a row: grow and reset
    assert float(state.scale) == 2.0**10 and int(state.counter) == 0
    state = step(step(state, good), bad)  # overflow resets the counter as well
    assert float(state.scale) == 2.0**9 and int(state.counter) == 0

    floor = adjust_loss_scale(init_loss_scale(1.0), False)
    assert float(floor.scale) == 1.0
    ceiling = adjust_loss_scale(init_loss_scale(2.0**24), True, period=1)
    assert float(ceiling.scale) == 2.0**24
    with pytest.raises(PruningError, match="initial"):
        init_loss_scale(0.0)


def test_scale_and_unscale_round_trip_in_float16():
    state = init_loss_scale(2.0**12)
    loss = jnp.asarray(1e-3, jnp.float16)
    assert scale_loss(loss, state).dtype == jnp.float16
    grads = jax.grad(lambda w: scale_loss(jnp.sum(w * w).astype(jnp.float16), state))(
        jnp.array([1e-3, 0.0, -2e-3], jnp.float32))
    unscaled = unscale_grads(grads, state)
    np.testing.assert_allclose(unscaled, [2e-3, 0.0, -4e-3], rtol=1e-3)
    assert unscaled[1] == 0.0


# ---------------------------------------------------------------- size accounting


def _small_tree():
    k = np.zeros((4, 3), np.float32)
    k[0, 0], k[1, 2], k[3, 1] = 0.5, -1.0, 2.0
    return {"params": {"Dense_0": {"kernel": k, "bias": np.array([0.1, 0.0, -0.2], np.float32)}}}


def test_size_report_float_hand_computed():
    tree = _small_tree()
    r = size_report(tree)
    assert tuple(r) == FORMATS and all(isinstance(v, int) for v in r.values())
    bias = 12
    assert r["dense_f32"] == 15 * 4
    assert r["dense_int8"] == 12 + 3 * 4 + bias  # int8 values + 3 per-channel scales
    assert r["bitmask"] == 2 + 3 * 4 + bias  # ceil(12 / 8) mask bytes + 3 f32 nonzeros
    assert r["coo"] == 3 * 2 * 4 + 3 * 4 + bias  # BCOO int32 (nnz, ndim) indices + f32 data
    assert r["csr"] == 5 * 4 + 3 * 4 + 3 * 4 + bias  # indptr (rows+1) + col ids + values
    raw = tree["params"]["Dense_0"]["bias"].tobytes() + tree["params"]["Dense_0"]["kernel"].tobytes()
    assert r["gzip"] == len(gzip.compress(raw, 9))  # tree order: bias before kernel


def test_size_report_quantized_tree_with_matrix_biases():
    # A ViT's attention biases are (heads, head_dim) matrices; once its kernels are quantized the
    # report must still count them as plain float leaves (it used to refuse the tree).
    tree = _small_tree()
    tree["params"]["attn"] = {"bias": np.ones((2, 4), np.float32)}
    r = size_report(tree, quantized_bits=8)
    assert r == size_report(quantize(tree, 8))
    assert r["dense_int8"] == 12 + 12 + 12 + 8 * 4  # kernel int8 + scales + bias + the f32 matrix bias


@pytest.mark.parametrize("bits, values", [(8, 3), (4, 2)])
def test_size_report_quantized_hand_computed(bits, values):
    tree = _small_tree()
    r = size_report(tree, quantized_bits=bits)
    assert r == size_report(quantize(tree, bits))
    scales, bias = 12, 12
    assert r["dense_f32"] == 60
    assert r["dense_int8"] == 12 * bits // 8 + scales + bias
    assert r["bitmask"] == 2 + values + scales + bias  # 3 nonzeros packed at `bits`
    assert r["coo"] == 24 + 3 + scales + bias  # BCOO really stores int8 data, even for 4 bits
    assert r["csr"] == 20 + 12 + values + scales + bias
    qa = quantize(tree, bits)["params"]["Dense_0"]
    raw = (tree["params"]["Dense_0"]["bias"].tobytes() + np.asarray(qa["kernel"].values).tobytes()
           + np.asarray(qa["kernel"].scale).tobytes())
    assert r["gzip"] == len(gzip.compress(raw, 9))


def test_sparse_int8_gzips_much_smaller_than_dense_f32():
    rng = np.random.default_rng(0)
    dense = {"params": {"Dense_0": {"kernel": rng.standard_normal((300, 100)).astype(np.float32)}}}
    pruned = {"params": {"Dense_0": {"kernel": _prune(dense["params"]["Dense_0"]["kernel"], 0.9)}}}
    dense_gzip = size_report(dense)["gzip"]
    sparse_int8 = size_report(pruned, quantized_bits=8)
    assert sparse_int8["gzip"] * 10 < dense_gzip
    table = format_size_report(sparse_int8)
    assert all(fmt in table for fmt in FORMATS)


# ---------------------------------------------------------------- sparse inference


class _MLP(nn.Module):
    sizes: tuple

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.sizes):
            x = nn.Dense(width)(x)
            if i < len(self.sizes) - 1:
                x = nn.relu(x)
        return x


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 1.0])
def test_sparse_forward_matches_dense_flax(sparsity):
    model = _MLP((16, 12, 5))
    x = jax.random.normal(jax.random.PRNGKey(1), (7, 20))
    params = model.init(jax.random.PRNGKey(0), x)
    params = jax.tree.map(lambda a: _prune(a, sparsity) if a.ndim == 2 else a, params)
    expected = model.apply(params, x)
    apply = jax.jit(sparse_mlp_apply)
    for convert in (to_bcoo, to_bcsr):
        out = apply(convert(params), x)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    nse = to_bcoo(params)["params"]["Dense_0"]["kernel"].nse
    assert nse == np.count_nonzero(params["params"]["Dense_0"]["kernel"])


def test_host_built_sparse_matrices_equal_fromdense():
    w = _prune(np.random.default_rng(4).standard_normal((9, 6)), 0.7)
    w[2] = 0.0  # an empty row
    ours, ref = to_bcoo({"k": w})["k"], sparse.BCOO.fromdense(jnp.asarray(w))
    ours_t, ref_t = to_bcsr({"k": w})["k"], sparse.BCSR.fromdense(jnp.asarray(w.T))
    for got, want in [(ours.data, ref.data), (ours.indices, ref.indices), (ours_t.data, ref_t.data),
                      (ours_t.indices, ref_t.indices), (ours_t.indptr, ref_t.indptr)]:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_sparse_layer_order_and_errors():
    params = _mlp_params(0.5, sizes=(4, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2))  # Dense_10 after Dense_9
    x = np.ones((2, 4), np.float32)
    dense = sparse_mlp_apply(params, x)
    assert dense.shape == (2, 2)
    np.testing.assert_allclose(sparse_mlp_apply(to_bcoo(params), x), dense, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sparse_mlp_apply(params, x[0]), dense[0], rtol=1e-6)
    with pytest.raises(PruningError, match="Conv_0"):
        sparse_mlp_apply({"params": {"Dense_0": {"kernel": np.ones((2, 2))}, "Conv_0": {}}}, x)
    with pytest.raises(PruningError, match="params/Dense_0"):
        sparse_mlp_apply({"params": {"Dense_0": {"bias": np.ones(2)}}}, x)
    with pytest.raises(PruningError, match="outside jit"):
        jax.jit(to_bcoo)(params)
    with pytest.raises(PruningError, match="w: to_bcsr converts 2-D"):
        to_bcsr({"w": np.ones((2, 2, 2), np.float32)}, include=lambda path, leaf: True)


@pytest.mark.parametrize("dtype", [np.float32, np.int8])
def test_coo_byte_formula_matches_a_real_bcoo(dtype):
    from jaxprune.quant.size import _coo_nbytes

    w = np.zeros((5, 7), dtype)
    w[0, 1] = w[3, 4] = w[4, 6] = 2
    mat = sparse.BCOO.fromdense(jnp.asarray(w))
    assert _coo_nbytes(w) == mat.indices.nbytes + mat.data.nbytes


def test_default_selection_on_a_users_transformer_quantizes_kernels_only():
    """The default is the pruning default: kernels. The (heads, head_dim) attention biases, the
    embedding table and the positional table are matrices too, and stay in float."""
    from jaxprune.paths import path_str

    from user_models import user_nnx_transformer

    model, _ = user_nnx_transformer()
    state = nnx.state(model, nnx.Param)
    q = quantize(state, bits=8)
    flat = jax.tree_util.tree_flatten_with_path(q, is_leaf=lambda x: isinstance(x, QuantizedArray))[0]
    chosen = sorted(path_str(p) for p, leaf in flat if isinstance(leaf, QuantizedArray))
    assert chosen == sorted(["attn/query/kernel", "attn/key/kernel", "attn/value/kernel", "attn/out/kernel",
                             "fc/kernel", "proj/kernel", "lm_head/kernel"])
    kept = {path_str(p): leaf for p, leaf in flat if not isinstance(leaf, QuantizedArray)}
    for name in ("embed/embedding", "pos", "attn/query/bias"):
        assert np.ndim(kept[name]) == 2 and jnp.issubdtype(kept[name].dtype, jnp.floating), name


def test_a_tree_without_kernel_names_is_an_error_not_a_silent_no_op():
    tree = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
    with pytest.raises(PruningError, match="include=jaxprune.matrices"):
        quantize(tree, bits=8)
    with pytest.raises(PruningError, match="'w'"):
        size_report(tree, quantized_bits=8)
    from jaxprune.paths import matrices
    assert isinstance(quantize(tree, bits=8, include=matrices)["w"], QuantizedArray)
