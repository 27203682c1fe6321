"""Leaf selection on models a researcher writes (tests/user_models.py) and on every flax layer type.

Issue 15 items 2 and 3: the default prunes weight kernels only (never attention biases, embeddings,
positional tables, norm parameters or BN statistics), and a glob naming a layer selects only its
kernels. docs/selection.md's table of flax layers is rebuilt here from flax itself.
"""

import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxprune as jp
from jaxprune.paths import flatten_with_paths
from jaxprune.recipes import mask_update, select_masks

from user_models import user_cnn, user_nnx_mlp, user_nnx_transformer

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "selection.md"

_K = jax.random.PRNGKey(0)
_X2, _X3, _X4 = jnp.ones((2, 6)), jnp.ones((1, 5, 6)), jnp.ones((1, 6, 6, 3))


def _linen(module, x):
    return module.init(_K, x)


def _linen_lstm():
    cell = nn.LSTMCell(4)
    return cell.init(_K, cell.initialize_carry(_K, _X2.shape), _X2)


class _WithPos(nnx.Module):
    def __init__(self):
        self.pos = nnx.Param(jnp.zeros((8, 4)))


def _r():
    return nnx.Rngs(0)


# Builders for every row of the docs table, keyed by the row's first cell.
LAYERS = {
    "linen `Dense`": lambda: _linen(nn.Dense(4), _X2),
    "linen `DenseGeneral`": lambda: _linen(nn.DenseGeneral((2, 3)), _X2),
    "linen `Conv`": lambda: _linen(nn.Conv(4, (3, 3)), _X4),
    "linen `ConvTranspose`": lambda: _linen(nn.ConvTranspose(4, (3, 3)), _X4),
    "linen `ConvLocal`": lambda: _linen(nn.ConvLocal(4, (3, 3)), _X4),
    "linen `Einsum`": lambda: _linen(nn.Einsum((6, 4), "ab,bc->ac"), _X2),
    "linen `MultiHeadDotProductAttention`":
        lambda: _linen(nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=4), _X3),
    "linen `LSTMCell`": _linen_lstm,
    "linen `Embed`": lambda: _linen(nn.Embed(10, 4), jnp.ones((2,), jnp.int32)),
    "linen `LayerNorm`": lambda: _linen(nn.LayerNorm(), _X2),
    "linen `RMSNorm`": lambda: _linen(nn.RMSNorm(), _X2),
    "linen `GroupNorm`": lambda: _linen(nn.GroupNorm(3), _X4),
    "linen `BatchNorm`": lambda: _linen(nn.BatchNorm(use_running_average=False), _X2),
    "linen `PReLU`": lambda: _linen(nn.PReLU(), _X2),
    "nnx `Linear`": lambda: nnx.Linear(6, 4, rngs=_r()),
    "nnx `LinearGeneral`": lambda: nnx.LinearGeneral(6, (2, 3), rngs=_r()),
    "nnx `Conv`": lambda: nnx.Conv(3, 4, (3, 3), rngs=_r()),
    "nnx `ConvTranspose`": lambda: nnx.ConvTranspose(3, 4, (3, 3), rngs=_r()),
    "nnx `Einsum`": lambda: nnx.Einsum("ab,bc->ac", (6, 4), (4,), rngs=_r()),
    "nnx `MultiHeadAttention`":
        lambda: nnx.MultiHeadAttention(num_heads=2, in_features=4, decode=False, rngs=_r()),
    "nnx `LoRALinear`": lambda: nnx.LoRALinear(6, 4, lora_rank=2, rngs=_r()),
    "nnx `LoRA`": lambda: nnx.LoRA(6, 2, 4, rngs=_r()),
    "nnx `LSTMCell`": lambda: nnx.LSTMCell(6, 4, rngs=_r()),
    "nnx `Embed`": lambda: nnx.Embed(10, 4, rngs=_r()),
    "nnx `LayerNorm`": lambda: nnx.LayerNorm(4, rngs=_r()),
    "nnx `RMSNorm`": lambda: nnx.RMSNorm(4, rngs=_r()),
    "nnx `GroupNorm`": lambda: nnx.GroupNorm(4, num_groups=2, rngs=_r()),
    "nnx `BatchNorm`": lambda: nnx.BatchNorm(4, rngs=_r()),
    "nnx `PReLU`": lambda: nnx.PReLU(),
    "an `nnx.Param` attribute (`self.pos = nnx.Param(...)`)": _WithPos,
}


def _doc_rows():
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in LAYERS:
            leaves, chosen = (re.findall(r"`([^`]+)`", re.sub(r"\([^)]*\)", "", c)) for c in cells[1:])
            rows[cells[0]] = (set(leaves), cells[2], set(chosen))
    return rows


def _leaves_and_default(built):
    """(leaf paths inside the layer, default selection) for a linen variables dict or nnx module."""
    if isinstance(built, nnx.Module):
        tree, strip = nnx.state(built, nnx.Any(nnx.Param, nnx.BatchStat)), 0
    else:
        tree, strip = built, 1  # drop the collection ('params', 'batch_stats')
    paths = [p for p, _ in flatten_with_paths(tree)[0]]
    try:
        chosen = jp.selected_paths(tree)
    except jp.PruningError as e:
        assert "selects no leaf" in str(e)
        chosen = []
    cut = lambda ps: {"/".join(p.split("/")[strip:]) for p in ps}  # noqa: E731
    return cut(paths), cut(chosen)


def test_layer_table_in_docs_is_what_flax_builds():
    rows = _doc_rows()
    assert set(rows) == set(LAYERS), set(LAYERS) ^ set(rows)
    for name, (leaves, text, chosen) in rows.items():
        got_leaves, got_chosen = _leaves_and_default(LAYERS[name]())
        assert got_leaves == leaves, (name, got_leaves)
        if text.startswith("the ") and text.endswith(" kernels"):
            chosen = {p for p in leaves if p.endswith("kernel")}
            assert len(chosen) == int(text.split()[1]), name
        assert got_chosen == chosen, (name, got_chosen)
        assert all(p.rsplit("/", 1)[-1] == "kernel" for p in got_chosen), name


# ------------------------------------------------------------------ the user's own models

def test_linen_cnn_default_prunes_kernels_only():
    _, v, _ = user_cnn()
    assert jp.selected_paths(v) == ["params/block/conv_a/kernel", "params/block/conv_b/kernel",
                                    "params/fc1/kernel", "params/head/kernel", "params/stem/kernel"]
    sp = jp.erk_sparsity(v, 0.9)
    for path, s in zip(jp.leaf_paths(v), jax.tree.leaves(sp)):
        if not path.endswith("/kernel"):  # BN mean/var/scale/bias and every bias
            assert s == 0.0, path


def test_linen_cnn_layer_glob_selects_its_kernels_only():
    _, v, _ = user_cnn()
    want = ["block/conv_a/kernel", "block/conv_b/kernel"]
    assert jp.selected_paths(v["params"], "block/*") == want
    assert jp.selected_paths(v, "*/block/*") == ["params/" + p for p in want]
    assert jp.selected_paths(v, "*/block") == ["params/" + p for p in want]


@pytest.mark.parametrize("include", [["*/fc1/*"], ["*/fc1/*", "*/block/conv_b/*"]])
def test_global_selection_over_layer_globs_never_prunes_a_bias(include):
    _, v, _ = user_cnn()
    scores = jp.magnitude_scores(v)
    masks = jp.global_masks(scores, 0.9, include=include)
    chosen = jp.selected_paths(v, include)
    assert all(p.endswith("/kernel") for p in chosen)
    n = sum(int(np.size(x)) for p, x in zip(jp.leaf_paths(v), jax.tree.leaves(v)) if p in chosen)
    pruned = 0
    for path, m in zip(jp.leaf_paths(v), jax.tree.leaves(masks)):
        if path in chosen:
            pruned += int((~np.asarray(m)).sum())
        else:
            assert bool(np.all(m)), path  # biases of fc1/conv_b and everything else stay dense
    assert pruned == jp.num_pruned(0.9, n)
    # The same selection through the recipes and the summary.
    again = select_masks(v, scores, 0.9, allocation="global", include=include)
    jax.tree.map(np.testing.assert_array_equal, masks, again)
    s = jp.summary(v, masks, include=include)
    assert s.prunable["size"] == n and s.prunable["nonzero"] <= n - jp.num_pruned(0.9, n)


def test_nnx_mlp_default():
    model, _ = user_nnx_mlp()
    params = nnx.state(model, nnx.Param)
    assert jp.selected_paths(params) == ["inp/kernel", "mid/kernel", "out/kernel"]


def test_nnx_transformer_global_pruning_keeps_biases_embeddings_positions_norms():
    model, _ = user_nnx_transformer()
    params = nnx.state(model, nnx.Param)
    kernels = ["attn/key/kernel", "attn/out/kernel", "attn/query/kernel", "attn/value/kernel",
               "fc/kernel", "lm_head/kernel", "proj/kernel"]
    assert jp.selected_paths(params) == kernels
    masks = jp.global_masks(jp.magnitude_scores(params), 0.9)
    for path, m, x in zip(jp.leaf_paths(params), jax.tree.leaves(masks), jax.tree.leaves(params)):
        if path in kernels:
            continue
        # attn/{query,key,value}/bias are (heads, head_dim): 2-D, and still never pruned.
        assert bool(np.all(m)), (path, np.shape(x))
    assert np.ndim(params["attn"]["query"]["bias"][...]) == 2
    sp = jp.erk_sparsity(params, 0.9)
    for path, s in zip(jp.leaf_paths(params), jax.tree.leaves(sp)):
        assert (s > 0) == (path in kernels), path
    fn = mask_update("magnitude", allocation="global")
    m2 = fn(params, None, None, jnp.float32(0.9), 0, None)
    jax.tree.map(np.testing.assert_array_equal, masks, m2)
    s = jp.summary(params)
    leaves = zip(jp.leaf_paths(params), jax.tree.leaves(params))
    assert s.prunable["size"] == sum(int(np.size(x)) for p, x in leaves if p in kernels)


def test_nnx_transformer_leaves_named_explicitly_are_selected():
    model, _ = user_nnx_transformer()
    params = nnx.state(model, nnx.Param)
    chosen = jp.selected_paths(params, [None, "pos", "embed/embedding"])
    assert "pos" in chosen and "embed/embedding" in chosen and "attn/query/bias" not in chosen
    assert jp.selected_paths(params, "attn/*/bias") == ["attn/key/bias", "attn/out/bias",
                                                        "attn/query/bias", "attn/value/bias"]
    assert jp.selected_paths(params, "attn") == ["attn/key/kernel", "attn/out/kernel",
                                                 "attn/query/kernel", "attn/value/kernel"]
    with pytest.raises(jp.PruningError, match="include='ln1' names layer.*'ln1/bias'"):
        jp.selected_paths(params, "ln1")
