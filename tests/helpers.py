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


def persistent_compilation_cache(directory):
    """Generator for a module fixture: XLA's persistent compilation cache in ``directory`` while the
    module runs (runs that compile the same programs again, as ``jaxprune sweep`` does), the previous
    settings restored afterwards."""
    from jax.experimental.compilation_cache import compilation_cache

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    old = {name: getattr(jax.config, name) for name in names}
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield
    for name, value in old.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()
