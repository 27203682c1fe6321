"""Small random parameter trees shared by the tests."""

import jax
import jax.numpy as jnp
import flax.linen as nn
from flax import nnx


class TinyMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(12)(x))
        x = nn.relu(nn.Dense(8)(x))
        return nn.Dense(4)(x)


class TinyNnx(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(6, 12, rngs=rngs)
        self.fc2 = nnx.Linear(12, 8, rngs=rngs)
        self.norm = nnx.LayerNorm(8, rngs=rngs)

    def __call__(self, x):
        return self.norm(self.fc2(jax.nn.relu(self.fc1(x))))


def linen_params(seed: int = 0):
    return TinyMLP().init(jax.random.PRNGKey(seed), jnp.ones((1, 6)))


def nnx_state(seed: int = 0):
    return nnx.state(TinyNnx(nnx.Rngs(seed)), nnx.Param)


def conv_tree(seed: int = 0):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    return {"conv": {"kernel": jax.random.normal(k[0], (3, 3, 4, 8)), "bias": jnp.zeros(8)},
            "dense": {"kernel": jax.random.normal(k[1], (32, 16)), "bias": jnp.zeros(16)},
            "out": {"kernel": jax.random.normal(k[2], (16, 4))}}
