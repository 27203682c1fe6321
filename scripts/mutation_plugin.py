"""pytest plugin used only by scripts/mutation.sh: fewer, derandomized Hypothesis examples.

Loaded with ``-p mutation_plugin``; its ``pytest_configure`` runs after tests/conftest.py has loaded
the suite's profile, so this one wins. Derandomized examples make every mutant see the same inputs
(mutmut assumes a test gives the same verdict each time it runs).
"""

import os


def pytest_configure(config):
    from hypothesis import settings

    settings.register_profile("mutation", max_examples=int(os.environ.get("MUTATION_EXAMPLES", "10")),
                              deadline=None, derandomize=True, print_blob=True)
    settings.load_profile("mutation")
