"""jaxprune.shrink.fastconv: the shifted-product conv equals XLA's conv; the rule; linen/nnx hooks."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx
from jax import lax

from jaxprune.errors import PruningError
from jaxprune.models import NnxSmallCNN, SmallCNN, init_params
from jaxprune.shrink.fastconv import (
    conv_general_dilated,
    fast_convs,
    shifted_conv,
    use_shifted,
    with_fast_convs,
)
from tests.user_models import user_cnn

DN2 = ("NHWC", "HWIO", "NHWC")


def lax_conv(x, w, strides, padding, rhs_dilation=None):
    nd = x.ndim - 2
    dn = lax.conv_dimension_numbers(x.shape, w.shape, DN2 if nd == 2 else ("NWC", "WIO", "NWC"))
    return lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=rhs_dilation,
                                    dimension_numbers=dn, precision="highest")


CASES = [  # (input shape, kernel shape, strides, padding, rhs_dilation)
    ((2, 9, 9, 1), (3, 3, 1, 8), (1, 1), "SAME", None),
    ((2, 9, 8, 3), (3, 3, 3, 5), (2, 2), "SAME", None),
    ((1, 10, 7, 2), (5, 3, 2, 4), (1, 2), "VALID", None),
    ((2, 8, 8, 1), (3, 3, 1, 4), (1, 1), ((2, 0), (1, 3)), None),
    ((2, 8, 8, 2), (3, 3, 2, 3), (2, 1), "SAME_LOWER", None),
    ((2, 11, 11, 1), (3, 3, 1, 6), (1, 1), "SAME", (2, 2)),
    ((2, 6, 6, 4), (1, 1, 4, 8), (1, 1), "VALID", None),
    ((3, 12, 2), (3, 2, 4), (2,), "SAME", None),  # one spatial dim
]


@pytest.mark.parametrize("xs, ws, strides, padding, dil", CASES)
def test_shifted_conv_equals_xla_conv(xs, ws, strides, padding, dil):
    kx, kw = jax.random.split(jax.random.PRNGKey(sum(xs) + sum(ws)))
    x, w = jax.random.normal(kx, xs), jax.random.normal(kw, ws)
    ref = lax_conv(x, w, strides, padding, dil)
    got = shifted_conv(x, w, strides, padding, dil)
    assert got.shape == ref.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_rule_picks_shifted_only_for_small_channels_last_convs():
    assert use_shifted((256, 28, 28, 1), (3, 3, 1, 8), DN2)
    assert use_shifted((256, 28, 28, 3), (3, 3, 3, 24), DN2)       # 648 MACs per pixel
    assert not use_shifted((256, 28, 28, 1), (3, 3, 1, 32), DN2)   # XLA's YNNPACK conv from 32 on
    assert not use_shifted((256, 28, 28, 1), (3, 3, 1, 64), DN2)   # wide output: XLA is fast
    assert not use_shifted((256, 14, 14, 8), (3, 3, 8, 16), DN2)   # 1152 MACs per pixel
    assert use_shifted((2, 8, 8, 4), (3, 3, 1, 4), DN2, feature_group_count=4)     # depthwise
    assert use_shifted((2, 8, 8, 384), (3, 3, 1, 768), DN2, feature_group_count=384)  # any width, m = 2
    assert not use_shifted((2, 8, 8, 4), (3, 3, 2, 4), DN2, feature_group_count=2)  # grouped, not depthwise
    assert not use_shifted((2, 4, 8, 8), (4, 1, 3, 3), ("NCHW", "OIHW", "NCHW"), feature_group_count=4)
    assert not use_shifted((2, 8, 8, 1), (3, 3, 1, 4), DN2, lhs_dilation=(2, 2))
    assert not use_shifted((2, 1, 8, 8), (4, 1, 3, 3), ("NCHW", "OIHW", "NCHW"))


@pytest.mark.parametrize("ws", [(3, 3, 1, 8), (3, 3, 16, 32)])  # shifted path, XLA path
def test_drop_in_matches_lax_values_and_gradients(ws):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 7, ws[2]))
    w = jax.random.normal(jax.random.PRNGKey(1), ws)

    def loss(conv, w, x):
        return jnp.sum(jnp.tanh(conv(x, w, (1, 1), "SAME", dimension_numbers=DN2, precision="highest")))

    for a, b in zip(jax.value_and_grad(loss, argnums=(1, 2))(conv_general_dilated, w, x),
                    jax.value_and_grad(loss, argnums=(1, 2))(lax.conv_general_dilated, w, x)):
        jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-4), a, b)


def n_convs(fn, *args):
    return str(jax.make_jaxpr(fn)(*args)).count("conv_general_dilated")


def test_linen_model_under_fast_convs_is_unchanged_and_uses_the_shifted_form():
    small = SmallCNN(10, channels=(8, 16), hidden=32)   # a 75 %-shrunk SmallCNN
    v = init_params(small, jax.random.PRNGKey(0), (1, 28, 28, 1))
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1))
    with fast_convs():
        y = jax.jit(small.apply)(v, x)
        shrunk_convs = n_convs(small.apply, v, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(small.apply(v, x)), rtol=1e-5, atol=1e-5)
    assert (n_convs(small.apply, v, x), shrunk_convs) == (2, 1)  # 1->8 shifted, 8->16 stays XLA's
    dense = SmallCNN(10)
    vd = init_params(dense, jax.random.PRNGKey(0), (1, 28, 28, 1))
    with fast_convs():
        assert n_convs(dense.apply, vd, x) == 2  # 1->32 and 32->64: XLA's conv is the faster one


def test_fast_convs_on_the_users_bn_model_and_a_custom_conv_is_kept():
    model, variables, x = user_cnn(jax.random.PRNGKey(0), width=4)
    with fast_convs():
        y = model.apply(variables, x, train=False)
    np.testing.assert_allclose(np.asarray(y), np.asarray(model.apply(variables, x, train=False)),
                               rtol=1e-5, atol=1e-5)
    calls = []

    def mine(*a, **kw):
        calls.append(1)
        return lax.conv_general_dilated(*a, **kw)

    conv = nn.Conv(4, (3, 3), conv_general_dilated=mine)
    cv = conv.init(jax.random.PRNGKey(0), jnp.ones((1, 5, 5, 1)))
    calls.clear()
    with fast_convs():
        conv.apply(cv, jnp.ones((1, 5, 5, 1)))
    assert calls == [1]


def test_nnx_copy_uses_the_fast_conv_and_the_original_is_untouched():
    m = NnxSmallCNN(10, channels=(8, 16), hidden=32, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 28, 28, 1))
    fast = with_fast_convs(m)
    np.testing.assert_allclose(np.asarray(fast(x)), np.asarray(m(x)), rtol=1e-5, atol=1e-5)
    assert fast.Conv_0.conv_general_dilated is conv_general_dilated
    assert m.Conv_0.conv_general_dilated is lax.conv_general_dilated
    assert fast.Conv_0.kernel[...] is m.Conv_0.kernel[...]
    with pytest.raises(PruningError, match="nnx.Module"):
        with_fast_convs(SmallCNN(10))


DEPTHWISE = [  # (input shape, kernel shape, strides, padding, rhs_dilation): kernel (*window, 1, m * C)
    ((2, 9, 9, 6), (3, 3, 1, 6), (1, 1), "SAME", None),
    ((2, 9, 8, 4), (3, 3, 1, 4), (2, 2), "SAME", None),
    ((1, 10, 7, 3), (5, 3, 1, 6), (1, 2), "VALID", None),     # multiplier 2
    ((2, 11, 11, 2), (3, 3, 1, 2), (1, 1), "SAME", (2, 2)),
    ((3, 12, 5), (3, 1, 5), (2,), "SAME", None),              # one spatial dim
]


@pytest.mark.parametrize("xs, ws, strides, padding, dil", DEPTHWISE)
def test_depthwise_shifted_conv_equals_xla_grouped_conv_values_and_gradients(xs, ws, strides, padding, dil):
    kx, kw = jax.random.split(jax.random.PRNGKey(sum(xs) + sum(ws)))
    x, w = jax.random.normal(kx, xs), jax.random.normal(kw, ws)
    dn = DN2 if len(xs) == 4 else ("NWC", "WIO", "NWC")
    groups = xs[-1]

    def loss(conv, w, x):
        y = conv(x, w, strides, padding, rhs_dilation=dil, dimension_numbers=dn,
                 feature_group_count=groups, precision="highest")
        return jnp.sum(jnp.tanh(y)), y

    (la, ya), ga = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)(conv_general_dilated, w, x)
    (lb, yb), gb = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)(lax.conv_general_dilated, w, x)
    assert use_shifted(xs, ws, dn, feature_group_count=groups) and ya.shape == yb.shape
    np.testing.assert_allclose(np.asarray(ya), np.asarray(yb), rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-4), ga, gb)


def test_grouped_but_not_depthwise_is_an_error_in_shifted_conv_and_left_to_xla_in_the_drop_in():
    x, w = jnp.ones((1, 6, 6, 4)), jnp.ones((3, 3, 2, 4))
    with pytest.raises(PruningError, match="feature_group_count=2 .* is not depthwise"):
        shifted_conv(x, w, (1, 1), "SAME", feature_group_count=2)
    got = conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN2, feature_group_count=2)
    want = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN2, feature_group_count=2)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_mobilenet_under_fast_convs_is_unchanged_and_has_no_grouped_conv_left():
    from jaxprune.models.mobilenet import MobileNetV2
    m = MobileNetV2(10, width=0.25, divisor=4)
    v = init_params(m, jax.random.PRNGKey(0), (1, 28, 28, 1))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 28, 28, 1))
    with fast_convs():
        y = jax.jit(m.apply)(v, x)
        fast_groups = re.findall(r"feature_group_count=(\d+)", str(jax.make_jaxpr(m.apply)(v, x)))
    np.testing.assert_allclose(np.asarray(y), np.asarray(m.apply(v, x)), rtol=1e-4, atol=1e-5)
    plain_groups = re.findall(r"feature_group_count=(\d+)", str(jax.make_jaxpr(m.apply)(v, x)))
    assert any(g != "1" for g in plain_groups) and all(g == "1" for g in fast_groups)


def test_channel_mismatch_is_an_error():
    with pytest.raises(PruningError, match="channels"):
        shifted_conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 1, 4)), (1, 1), "SAME")


def test_nnx_mobilenet_copy_computes_its_depthwise_convs_shifted():
    from jaxprune.models.mobilenet import NnxMobileNetV2
    m = NnxMobileNetV2(10, width=0.25, divisor=4, blocks=((1, 16, 1, 1), (6, 24, 2, 2)), last_channels=32,
                       rngs=nnx.Rngs(0))
    m.eval()
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 28, 28, 1))
    fast = with_fast_convs(m)
    np.testing.assert_allclose(np.asarray(fast(x)), np.asarray(m(x)), rtol=1e-4, atol=1e-5)
    groups = re.findall(r"feature_group_count=(\d+)", str(jax.make_jaxpr(lambda x: fast(x))(x)))
    assert all(g == "1" for g in groups)
    plain = re.findall(r"feature_group_count=(\d+)", str(jax.make_jaxpr(lambda x: m(x))(x)))
    assert any(g != "1" for g in plain)
