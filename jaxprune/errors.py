"""Exceptions raised by jaxprune.

Every user error is a :class:`JaxpruneError`, itself a :class:`ValueError` subclass (so ``except
ValueError`` still catches them), and every message names the offending leaf path, argument or config
field. The ``jaxprune`` command turns exactly these into one ``error:`` line (exit status 2); any other
exception is a bug and keeps its traceback.

>>> issubclass(ConfigError, JaxpruneError) and issubclass(JaxpruneError, ValueError)
True
"""


class JaxpruneError(ValueError):
    """The base class of the kit's own errors (bad input, not a bug)."""


class PruningError(JaxpruneError):
    """A bad argument to a pruning function (sparsity, structure, trees that do not match...)."""


class DataError(JaxpruneError):
    """A data set that cannot be found, read or validated."""


class ConfigError(JaxpruneError):
    """A bad experiment configuration (unknown key, bad value)."""


class DataNotFound(DataError):
    """A data set whose files are not found anywhere searched (``dataset=auto`` falls back only on this;
    a file that is found but corrupt is a plain :class:`DataError`)."""
