"""Pruning methods built from the core and the harness (:mod:`jaxprune.harness`).

Importing this package registers every method of ``jaxprune run method=...``; a new method is one
module here (or in the user's own code) that decorates ``fn(run) -> MethodOutput`` with
:func:`jaxprune.harness.register_method`, plus its import line below (docs/methods.md).
"""

from jaxprune.methods import runs  # noqa: F401  (registers none, one_shot, ..., synflow)
