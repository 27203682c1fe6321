"""Strict test settings (equinox style).

* Warnings are errors (``filterwarnings = error`` in pyproject.toml). The allowlist there names only
  import-time deprecations raised inside third-party packages (protobuf, tfds, pkg_resources).
* ``jax_numpy_rank_promotion="raise"`` so an (n,) mask silently broadcast over an (m, n) kernel fails.
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


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)
