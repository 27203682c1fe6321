"""Strict test settings (equinox style).

* Warnings are errors (``filterwarnings = error`` in pyproject.toml). The allowlist there names only
  import-time deprecations raised inside third-party packages (protobuf, tfds, pkg_resources).
* ``jax_numpy_rank_promotion="raise"`` so an (n,) mask silently broadcast over an (m, n) kernel fails.
* ``jax_numpy_dtype_promotion="strict"`` (no implicit promotion between dtypes) for the test files
  of the core, :data:`STRICT_DTYPE_FILES`. Not suite-wide: optax 0.2.8's Adam bias correction
  (``1 - decay**count``, a float to an int32 power) and flax's ``nn.avg_pool`` (float / int) raise
  under it, so every test that trains with Adam or pools would fail inside those libraries.
* Hypothesis runs a bounded number of examples without deadlines (JIT compile times vary on 2 cores).
* Files run slowest first (:data:`DURATIONS`, seconds per file from an earlier run), so that under
  ``pytest-xdist --dist loadfile --no-loadscope-reorder`` (``scripts/test``) no long file starts last
  on one worker while the other idles (longest-processing-time-first scheduling). Within a file the
  order is unchanged. ``JAXPRUNE_RECORD_DURATIONS=PATH`` writes this run's per-file seconds to PATH.
* ``scripts/test`` compiles with ``JAX_DISABLE_MOST_OPTIMIZATIONS=1`` (XLA's backend optimisation
  level 0: the suite's small programs compile faster than they would run faster). The files in
  :data:`XLA_OPTIMIZED_FILES` run with optimisations on: the recorded sweep results are the fully
  optimised program's bits. (Three files that train longer ran faster optimised until scripts/test
  also chose XLA:CPU's legacy emitters; with them, level 0 is faster for those too, docs/testing.md.)
"""

import json
import os
from pathlib import Path


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


XLA_OPTIMIZED_FILES = frozenset({
    "test_results_unchanged.py",  # fit_sha256 / accuracies recorded from the optimised program
})
"""Test files compiled with XLA's optimisations even when the run disables them (see above)."""


@pytest.fixture(scope="module", autouse=True)
def _xla_optimizations_for(request):
    name = os.path.basename(str(request.node.fspath))
    if name not in XLA_OPTIMIZED_FILES or not jax.config.values["jax_disable_most_optimizations"]:
        yield
        return
    # The flag is read at compile time and is not part of jit's cache key: drop what this worker
    # compiled before, so no executable built at level 0 is reused here (and the other way after).
    jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0")  # and subprocesses
            yield
    finally:
        jax.clear_caches()
        jax.config.update("jax_disable_most_optimizations", True)

DURATIONS = Path(__file__).with_name("durations.json")
"""``{test file: seconds}`` (setup + call + teardown of its tests), written by a run with
``JAXPRUNE_RECORD_DURATIONS=tests/durations.json``; a file it does not list counts as its median."""


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config, items):
    try:
        seconds = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return
    if not seconds:
        return
    median = sorted(seconds.values())[len(seconds) // 2]
    items.sort(key=lambda item: -seconds.get(_file_of(item.nodeid), median))  # stable: files stay whole


_recorded: dict = {}


def pytest_runtest_logreport(report):
    if os.environ.get("JAXPRUNE_RECORD_DURATIONS"):
        f = _file_of(report.nodeid)
        _recorded[f] = _recorded.get(f, 0.0) + float(report.duration)


def pytest_sessionfinish(session):
    path = os.environ.get("JAXPRUNE_RECORD_DURATIONS")
    if path and _recorded and not hasattr(session.config, "workerinput"):  # the controller only
        Path(path).write_text(json.dumps({k: round(v, 1) for k, v in sorted(_recorded.items())},
                                         indent=0) + "\n")


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)
