"""Exceptions raised by jaxprune.

Every user error is a :class:`ValueError` subclass, so ``except ValueError`` catches them, and every
message names the offending leaf path, argument or config field.
"""


class PruningError(ValueError):
    """A bad argument to a pruning function (sparsity, structure, trees that do not match...)."""


class DataError(ValueError):
    """A data set that cannot be found, read or validated."""


class ConfigError(ValueError):
    """A bad experiment configuration (unknown key, bad value)."""
