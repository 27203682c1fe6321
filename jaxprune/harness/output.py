"""The typed output of a training-time method (what ``method(run)`` returns)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

__all__ = ["MethodOutput"]


class MethodOutput(NamedTuple):
    """A finished method: the final params and model state, the masks, the accuracies it measured.

    * ``dense_test_accuracy``: after dense training (``None`` for methods that never train dense);
    * ``pruned_test_accuracy``: right after pruning, before any fine-tuning;
    * ``test_accuracy``: the final accuracy when the method measured it itself (a shrunk model);
      ``None``: the harness evaluates ``params`` / ``model_state``;
    * ``final_model`` / ``final_variables``: a different model the run ends with (a shrunk one);
    * ``extra``: method-specific result fields (documented in docs/results_schema.md); they win over
      the harness's defaults of the same name (e.g. a shrunk run's ``nonzero_params``).

    >>> out = MethodOutput({'w': 1.0}, {}, {'w': True}, 0.9, 0.8)
    >>> out.test_accuracy is None, out._replace(extra={'imp_rounds': 3}).extra
    (True, {'imp_rounds': 3})
    """

    params: Any
    model_state: Any
    masks: Any
    dense_test_accuracy: Optional[float]
    pruned_test_accuracy: Optional[float]
    test_accuracy: Optional[float] = None
    final_model: Any = None
    final_variables: Optional[dict] = None
    extra: dict = {}

    def with_extra(self, **fields: Any) -> "MethodOutput":
        """A copy with ``fields`` added to ``extra``.

        >>> MethodOutput(0, {}, 0, None, None).with_extra(a=1).extra
        {'a': 1}
        """
        return self._replace(extra={**self.extra, **fields})
