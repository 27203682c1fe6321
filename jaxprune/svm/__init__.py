"""Linear SVMs as JAX pytrees and their pruning (see ``docs/svm.md``).

A :class:`LinearSVM` is a NamedTuple ``(w, b)``; it is pruned by the core pipeline like any network
(``w`` weight-wise or feature-wise, ``b`` never) and fine-tuned with masked updates.
"""

from jaxprune.svm.model import (
    LOSSES,
    LinearSVM,
    Scaler,
    accuracy,
    data_loss,
    decision_function,
    fit_scaler,
    fit_svm,
    init_svm,
    objective,
    ovr_targets,
    predict,
    standardize,
)
from jaxprune.svm.pruning import (
    CRITERIA,
    STRUCTURES,
    features_used,
    finetune_svm,
    prune_svm,
    svm_grads,
    svm_masks,
    svm_scores,
)

__all__ = [
    "LinearSVM", "Scaler", "LOSSES", "CRITERIA", "STRUCTURES",
    "fit_scaler", "standardize", "init_svm", "ovr_targets",
    "decision_function", "predict", "accuracy", "data_loss", "objective", "fit_svm",
    "svm_grads", "svm_scores", "svm_masks", "features_used", "finetune_svm", "prune_svm",
]
