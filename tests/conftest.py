"""Strict test settings (equinox style).

* Warnings are errors (``filterwarnings = error`` in pyproject.toml). The allowlist there names only
  import-time deprecations raised inside third-party packages (protobuf, tfds, pkg_resources).
* ``jax_numpy_rank_promotion="raise"`` so an (n,) mask silently broadcast over an (m, n) kernel fails.
* ``jax_numpy_dtype_promotion="strict"`` (no implicit promotion between dtypes) for the test files
  of the core, :data:`STRICT_DTYPE_FILES`. Not suite-wide: optax 0.2.8's Adam bias correction
  (``1 - decay**count``, a float to an int32 power) and flax's ``nn.avg_pool`` (float / int) raise
  under it, so every test that trains with Adam or pools would fail inside those libraries.
* Hypothesis runs a bounded number of examples without deadlines (JIT compile times vary on 2 cores).
"""

import os


import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

settings.register_profile("jaxprune", max_examples=25, deadline=None, print_blob=True)
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "jaxprune")


STRICT_DTYPE_FILES = frozenset({
    "test_allocate.py", "test_counts.py", "test_masks.py", "test_paths.py", "test_scores.py",
    "test_select.py", "test_structures.py", "test_wiring.py", "test_structure_graph.py",
})
"""Test files run under strict dtype promotion (their code under test calls no optax/flax pooling)."""


@pytest.fixture(autouse=True)
def _strict_dtypes_for_the_core(request):
    if os.path.basename(str(request.node.fspath)) in STRICT_DTYPE_FILES:
        with jax.numpy_dtype_promotion("strict"):
            yield
    else:
        yield


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)
