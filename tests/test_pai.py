import jax
import jax.numpy as jnp
import numpy as np

import jaxprune as jp
from jaxprune.methods.pai import grasp_scores, snip_scores, synflow_masks, synflow_scores


def _net():
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    p = {"w1": jax.random.normal(k[0], (3, 4)), "w2": jax.random.normal(k[1], (4, 2))}
    x = jax.random.normal(k[2], (5, 3))
    loss = lambda p: jnp.mean(jnp.tanh(jnp.tanh(x @ p["w1"]) @ p["w2"]) ** 2)  # noqa: E731
    return p, loss


def test_snip_matches_finite_differences():
    p, loss = _net()
    s = snip_scores(loss, p)
    eps = 1e-2
    for name in p:
        i = (1, 1)
        e = jnp.zeros_like(p[name]).at[i].set(eps)
        fd = (loss({**p, name: p[name] + e}) - loss({**p, name: p[name] - e})) / (2 * eps)
        np.testing.assert_allclose(s[name][i], abs(float(p[name][i] * fd)), rtol=2e-2)


def test_grasp_hg_matches_finite_difference_of_gradients():
    p, loss = _net()
    g = jax.grad(loss)(p)
    eps = 1e-2
    plus = jax.grad(loss)(jax.tree.map(lambda w, d: w + eps * d, p, g))
    minus = jax.grad(loss)(jax.tree.map(lambda w, d: w - eps * d, p, g))
    hg = jax.tree.map(lambda a, b: (a - b) / (2 * eps), plus, minus)
    s = grasp_scores(loss, p)
    for name in p:
        np.testing.assert_allclose(s[name], p[name] * hg[name], rtol=5e-2, atol=1e-5)


def test_synflow_conservation_per_layer():
    k = jax.random.split(jax.random.PRNGKey(1), 3)
    p = {"a": jax.random.normal(k[0], (5, 7)), "b": jax.random.normal(k[1], (7, 6)),
         "c": jax.random.normal(k[2], (6, 3))}
    f = lambda p, x: jax.nn.relu(jax.nn.relu(x @ p["a"]) @ p["b"]) @ p["c"]  # noqa: E731
    s = synflow_scores(f, p, (1, 5))
    sums = [float(s[n].sum()) for n in "abc"]
    assert all(float(v.min()) >= 0 for v in s.values())
    np.testing.assert_allclose(sums, sums[0], rtol=1e-4)


def test_synflow_avoids_layer_collapse_where_global_magnitude_collapses():
    k = jax.random.split(jax.random.PRNGKey(2), 3)
    # A wide first layer of large weights and a small-scale narrow middle layer: one global threshold
    # on magnitude (or SNIP-like scores dominated by scale) removes the whole middle layer at 99 %.
    p = {"a": 10 * jax.random.normal(k[0], (64, 64)), "b": 0.01 * jax.random.normal(k[1], (64, 8)),
         "c": 10 * jax.random.normal(k[2], (8, 10))}
    f = lambda p, x: jax.nn.relu(jax.nn.relu(x @ p["a"]) @ p["b"]) @ p["c"]  # noqa: E731
    mag = jp.global_masks(jp.magnitude_scores(p), 0.99)
    assert int(mag["b"].sum()) == 0  # collapsed
    syn = synflow_masks(f, p, (1, 64), 0.99, rounds=50)
    total = sum(x.size for x in p.values())
    assert sum(int((~m).sum()) for m in syn.values()) == jp.num_pruned(0.99, total)
    assert all(int(m.sum()) > 0 for m in syn.values())  # every layer keeps weights
