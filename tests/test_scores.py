import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp

from helpers import linen_params


def _grads(params):
    return jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)


def test_values_against_hand_computation():
    p = {"w": jnp.array([[2.0, -1.0], [0.0, 3.0]])}
    g = {"w": jnp.array([[0.5, 3.0], [1.0, -1.0]])}
    np.testing.assert_allclose(jp.magnitude_scores(p)["w"], [[2, 1], [0, 3]])
    np.testing.assert_allclose(jp.saliency_scores(p, g)["w"], [[1, 3], [0, 3]])
    np.testing.assert_allclose(jp.movement_scores(p, g)["w"], [[-1, 3], [0, 3]])
    np.testing.assert_allclose(jp.taylor_scores(p, g)["w"], [[1, 9], [0, 9]])


def test_random_scores_differ_per_leaf_and_key():
    p = {"a": jnp.zeros((4, 4)), "b": jnp.zeros((4, 4))}
    s = jp.random_scores(jax.random.PRNGKey(0), p)
    assert not np.array_equal(s["a"], s["b"])
    s2 = jp.random_scores(jax.random.PRNGKey(1), p)
    assert not np.array_equal(s["a"], s2["a"])
    np.testing.assert_array_equal(s["a"], jp.random_scores(jax.random.PRNGKey(0), p)["a"])


def test_gradient_scorers_need_grads():
    p = linen_params()
    for name in ("saliency", "movement", "taylor"):
        with pytest.raises(jp.PruningError, match="gradients"):
            jp.compute_scores(name, p)
    with pytest.raises(jp.PruningError, match="key"):
        jp.compute_scores("random", p)
    with pytest.raises(jp.PruningError, match="needs gradients"):
        jp.saliency_scores(p, None)


def test_grads_tree_must_match():
    p = {"w": jnp.ones((2, 2))}
    with pytest.raises(jp.PruningError, match="'w'"):
        jp.saliency_scores(p, {"w": jnp.ones((2, 3))})


def test_unknown_scorer_lists_known():
    with pytest.raises(jp.PruningError, match="magnitude"):
        jp.get_scorer("nope")


def test_register_new_scorer_is_usable():
    jp.register_scorer("neg", lambda p, grads=None, key=None: jax.tree.map(lambda w: -jnp.abs(w), p))
    try:
        s = jp.compute_scores("neg", {"w": jnp.array([1.0, -2.0])})
        np.testing.assert_allclose(s["w"], [-1, -2])
    finally:
        del jp.SCORERS["neg"]


def test_random_scores_are_float32_even_with_x64():
    # A float64 score tree would double the memory of a large model's scores for no gain.
    with jax.enable_x64(True):
        s = jp.random_scores(jax.random.PRNGKey(0), {"w": np.zeros((3, 2), np.float64)})
    assert s["w"].dtype == jnp.float32


@pytest.mark.parametrize("name, fn", [("saliency", jp.saliency_scores), ("movement", jp.movement_scores),
                                      ("taylor", jp.taylor_scores)])
def test_gradient_scorers_name_themselves_and_use_grads(name, fn):
    p = {"w": jnp.array([[2.0, -1.0]])}
    g = {"w": jnp.array([[0.5, 3.0]])}
    with pytest.raises(jp.PruningError, match=rf"^{name}_scores needs gradients"):
        fn(p, None)
    np.testing.assert_array_equal(jp.compute_scores(name, p, grads=g)["w"], fn(p, g)["w"])


def test_compute_scores_passes_the_key():
    p = {"w": jnp.zeros((4, 4))}
    k = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(jp.compute_scores("random", p, key=k)["w"], jp.random_scores(k, p)["w"])
