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


def disk_full(err: BaseException | None) -> OSError | None:
    """The "no space left" ``OSError`` (``ENOSPC``, or ``EDQUOT``: a quota) in ``err`` or in the chain
    of exceptions it was raised from or during, else ``None``. A full disk surfaces wrapped: orbax
    re-raises its background save thread's error when the checkpoint manager closes.

    >>> import errno
    >>> try:
    ...     try:
    ...         raise OSError(errno.ENOSPC, 'No space left on device', 'ck/meta')
    ...     except OSError:
    ...         raise RuntimeError('save failed')
    ... except RuntimeError as wrapped:
    ...     disk_full(wrapped).filename, disk_full(RuntimeError('other'))
    ('ck/meta', None)
    """
    import errno

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err
        err = err.__cause__ or err.__context__
    return None
