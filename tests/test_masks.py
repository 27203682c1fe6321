import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp

from helpers import linen_params


def test_apply_preserves_dtype_and_zeros():
    p = {"w": jnp.array([[1.0, 2.0]], jnp.bfloat16), "i": jnp.array([[3, 4]], jnp.int8)}
    m = {"w": jnp.array([[True, False]]), "i": jnp.array([[False, True]])}
    out = jp.apply_masks(p, m)
    assert out["w"].dtype == jnp.bfloat16 and out["i"].dtype == jnp.int8
    np.testing.assert_array_equal(out["w"].astype(jnp.float32), [[1, 0]])
    np.testing.assert_array_equal(out["i"], [[0, 4]])


def test_algebra():
    a = {"w": jnp.array([True, True, False, False])}
    b = {"w": jnp.array([True, False, True, False])}
    np.testing.assert_array_equal(jp.intersect_masks(a, b)["w"], [True, False, False, False])
    np.testing.assert_array_equal(jp.union_masks(a, b)["w"], [True, True, True, False])
    assert jp.is_nested(jp.intersect_masks(a, b), a) and not jp.is_nested(a, b)


def test_mask_checks():
    with pytest.raises(jp.PruningError, match="'w'.*bool"):
        jp.apply_masks({"w": jnp.ones(2)}, {"w": jnp.ones(2)})
    with pytest.raises(jp.PruningError, match="'w'"):
        jp.apply_masks({"w": jnp.ones(2)}, {"w": jnp.ones(3, bool)})


def test_summary_counts_table_and_json():
    p = linen_params()
    masks = jp.topk_masks(jp.magnitude_scores(p), jp.uniform_sparsity(p, 0.5))
    s = jp.summary(jp.apply_masks(p, masks))
    kernels = [x for x in jax.tree.leaves(p) if x.ndim == 2]
    n = sum(x.size for x in kernels)
    zeros = sum(jp.num_pruned(0.5, x.size) for x in kernels)
    assert s.prunable["size"] == n and s.prunable["nonzero"] == n - zeros
    assert s.total["size"] == sum(x.size for x in jax.tree.leaves(p))
    assert s.total["bytes"] == 4 * s.total["size"]
    table = s.table()
    assert "params/Dense_0/kernel" in table and "(dense)" in table and "prunable" in table
    d = json.loads(json.dumps(s.to_dict()))
    assert d["prunable"]["sparsity"] == pytest.approx(zeros / n)
    ms = jp.summary(p, masks)
    assert ms.prunable["nonzero"] == n - zeros


def test_dense_masks():
    m = jp.dense_masks(linen_params())
    assert all(x.dtype == jnp.bool_ and bool(x.all()) for x in jax.tree.leaves(m))


def test_summary_counts_table_and_dict_exactly():
    p = {"d": {"kernel": np.array([[0.0, 1.0], [2.0, 0.0]], np.float32), "bias": np.zeros((2,), np.float16)},
         "s": np.float32(3.0)}
    s = jp.summary(p)
    assert [(r.path, r.dtype, r.nonzero, r.prunable) for r in s.leaves] == [
        ("d/bias", "float16", 0, False), ("d/kernel", "float32", 2, True), ("s", "float32", 1, False)]
    assert s.table().splitlines() == [
        "leaf            shape  size  nonzero  sparsity  bytes",
        "--------------  -----  ----  -------  --------  -----",
        "d/bias (dense)  2         2        0   100.00%      4",
        "d/kernel        2x2       4        2    50.00%     16",
        "s (dense)       ()        1        1     0.00%      4",
        "prunable                  4        2    50.00%     16",
        "total                     7        3    57.14%     24",
    ]
    d = s.to_dict()
    assert sorted(d) == ["leaves", "prunable", "total"]
    assert d["leaves"][1] == {"path": "d/kernel", "shape": [2, 2], "dtype": "float32", "size": 4,
                              "nonzero": 2, "sparsity": 0.5, "bytes": 16, "prunable": True}
    assert d["total"] == {"size": 7, "nonzero": 3, "sparsity": 1 - 3 / 7, "bytes": 24}
