"""Structured selection on models a researcher writes (tests/user_models.py), issue 15 items 4 and 5.

* Neurons never prune the classes (the output layer is named, or read off the model with
  ``jaxprune.wiring.output_kernels``) and never empty a layer;
* global Neurons on a *trained* CNN prune every layer about equally (the per-leaf mean normaliser);
* N:M groups run along each kernel's reduction axis: every run of m consecutive inputs, for every
  output, keeps exactly n (Dense, conv, and the transformer's q/k/v/out kernels).
"""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import jaxprune as jp
from jaxprune.wiring import output_kernels, reduction_axes

from user_models import user_cnn, user_nnx_mlp, user_nnx_transformer


def _units_kept(mask, axis=-1):
    m = np.moveaxis(np.asarray(mask), axis, -1)
    return m.reshape(-1, m.shape[-1]).any(axis=0)


def _cnn_fn(model, variables):
    rest = {k: v for k, v in variables.items() if k != "params"}
    return lambda p, x: model.apply({"params": p, **rest}, x)


def _nnx_apply(graphdef, rest):
    def fn(p, x):
        # The user's transformer adds a (t, width) positional table to (batch, t, width) embeddings.
        with jax.numpy_rank_promotion("allow"):
            return nnx.merge(graphdef, p, rest)(x)
    return fn


def test_neurons_never_prune_the_classes_of_a_user_cnn():
    model, variables, x = user_cnn()
    params = variables["params"]
    scores = jp.magnitude_scores(params)
    with pytest.raises(jp.PruningError, match="output_kernels"):
        jp.topk_masks(scores, 0.5, structure=jp.Neurons())
    outs = output_kernels(_cnn_fn(model, variables), params, x)
    assert outs == ["head/kernel"]
    for s in (0.5, 1.0):
        for masks in (jp.topk_masks(scores, s, structure=jp.Neurons(outputs=outs)),
                      jp.global_masks(scores, s, structure=jp.Neurons(outputs=outs))):
            assert _units_kept(masks["head"]["kernel"]).all()  # all 10 classes
            for path, m in zip(jp.leaf_paths(masks), jax.tree.leaves(masks)):
                if path.endswith("kernel"):
                    assert _units_kept(m).sum() >= 1, (path, s)  # no layer emptied
    # Layerwise at 100 %: every hidden layer keeps exactly its one best unit.
    m = jp.topk_masks(scores, 1.0, structure=jp.Neurons(outputs=outs))
    assert [int(_units_kept(m[k]["kernel"]).sum()) for k in ("stem", "fc1")] == [1, 1]


def test_neurons_on_nnx_models_keep_outputs():
    for build, head in ((user_nnx_mlp, "out/kernel"), (user_nnx_transformer, "lm_head/kernel")):
        model, x = build()
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        outs = output_kernels(_nnx_apply(graphdef, rest), params, x)
        assert outs == [head]
        scores = jp.magnitude_scores(params)
        include = ["inp/kernel", "mid/kernel", "out/kernel"] if head == "out/kernel" else \
            ["fc/kernel", "lm_head/kernel"]
        masks = jp.global_masks(scores, 0.5, include=include, structure=jp.Neurons(outputs=outs))
        flat = dict(zip(jp.leaf_paths(masks), jax.tree.leaves(masks)))
        assert _units_kept(flat[head]).all()
        assert not _units_kept(flat[include[0]]).all()  # something else was pruned


def _train_cnn(steps=300):
    from sklearn.datasets import load_digits

    d = load_digits()
    X = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int32)
    model, variables, _ = user_cnn(image=8)
    params, stats = variables["params"], variables["batch_stats"]
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, stats, opt, xb, yb):
        def loss(p):
            logits, upd = model.apply({"params": p, "batch_stats": stats}, xb, train=True,
                                      mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), upd
        (_, upd), g = jax.value_and_grad(loss, has_aux=True)(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), upd["batch_stats"], opt

    rng = np.random.default_rng(0)
    for _ in range(steps):
        idx = rng.integers(0, 1400, 64)
        params, stats, opt = step(params, stats, opt, X[idx], y[idx])
    variables = {"params": params, "batch_stats": stats}
    acc = float((model.apply(variables, X[1400:]).argmax(-1) == y[1400:]).mean())
    return model, variables, X[:2], acc


def test_global_neurons_prune_layers_of_a_trained_cnn_fairly():
    model, variables, x, acc = _train_cnn()
    assert acc > 0.8  # really trained
    params = variables["params"]
    outs = output_kernels(_cnn_fn(model, variables), params, x)
    scores = jp.magnitude_scores(params)

    def fractions(s, normalize):
        masks = jp.global_masks(scores, s, structure=jp.Neurons(outputs=outs), normalize=normalize)
        return {p: 1.0 - _units_kept(m).mean() for p, m in zip(jp.leaf_paths(masks),
                                                              jax.tree.leaves(masks))
                if p.endswith("kernel") and p not in outs}

    # The default normaliser divides each leaf's unit scores by their mean: no layer loses more than
    # 20 points more (or less) than the target (measured: at most 12.5 points, one unit of 8).
    for s in (0.3, 0.5, 0.7):
        fr = fractions(s, "auto")
        assert max(abs(f - s) for f in fr.values()) <= 0.2, (s, fr)
    # Raw scores are not comparable across layers (fc1's 128-input units have the smallest weights):
    # fc1 goes first and the stem not at all. This is what the normaliser fixes.
    raw = fractions(0.5, None)
    assert raw["fc1/kernel"] - 0.5 > 0.2 and raw["stem/kernel"] < 0.3, raw


def _assert_nm_along(mask, axis, n, m):
    k = np.moveaxis(np.asarray(mask), axis, -1)
    runs = k.reshape(k.shape[:-1] + (k.shape[-1] // m, m)).sum(-1)
    assert (runs == n).all()


def test_nm_runs_along_the_reduction_axis_of_user_models():
    # Dense (nnx MLP): axis 0 of (in, out), inferred from the shape.
    model, x = user_nnx_mlp()
    _, params, _ = nnx.split(model, nnx.Param, ...)
    masks = jp.topk_masks(jp.magnitude_scores(params), 0.5, structure=jp.NM(2, 4))
    flat = dict(zip(jp.leaf_paths(masks), jax.tree.leaves(masks)))
    for path in ("inp/kernel", "mid/kernel", "out/kernel"):
        _assert_nm_along(flat[path], 0, 2, 4)
    # Conv (linen CNN): axis -2 (in) of HWIO, inferred; the stem has a single input channel.
    model, variables, x = user_cnn()
    include = ["block/conv_a/kernel", "block/conv_b/kernel", "fc1/kernel", "head/kernel"]
    masks = jp.topk_masks(jp.magnitude_scores(variables["params"]), 0.5, include=include,
                          structure=jp.NM(2, 4))
    _assert_nm_along(masks["block"]["conv_a"]["kernel"], 2, 2, 4)
    _assert_nm_along(masks["fc1"]["kernel"], 0, 2, 4)
    # Attention kernels: a shape cannot tell, so the default refuses; the traced axes are right.
    model, tokens = user_nnx_transformer()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    scores = jp.magnitude_scores(params)
    with pytest.raises(jp.PruningError, match="attn/.*kernel.*reduction_axes"):
        jp.topk_masks(scores, 0.5, structure=jp.NM(2, 4))
    axes = reduction_axes(_nnx_apply(graphdef, rest), params, tokens)
    masks = jp.topk_masks(scores, 0.5, structure=jp.NM(2, 4, axis=axes))
    flat = dict(zip(jp.leaf_paths(masks), jax.tree.leaves(masks)))
    for path, axis in (("attn/query/kernel", 0), ("attn/key/kernel", 0), ("attn/value/kernel", 0),
                       ("attn/out/kernel", 1), ("fc/kernel", 0), ("proj/kernel", 0)):
        assert axes[path] == axis
        _assert_nm_along(flat[path], axis, 2, 4)
    assert np.asarray(flat["embed/embedding"]).all()  # not a kernel: never selected by default
