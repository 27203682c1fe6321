"""Linear-SVM pruning on scikit-learn's bundled digits (``kind='svm'``, run by ``run_svm``).

Fields: dataset ('digits' | 'breast_cancer'), seed (train/test split and init), C (scikit-learn's C:
L2 penalty ‖w‖²/(2·C·n)), loss ('squared_hinge' | 'hinge'), steps (full-batch Adam steps of dense
training), learning_rate (Adam, cosine-decayed), criterion ('magnitude' | 'saliency'), structure
('weights': unstructured over w | 'features': whole rows of w), sparsity (of w, in [0, 1]),
finetune_steps (masked re-training after pruning; 0 = one-shot). See docs/svm.md.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Default SVM experiment: squared-hinge one-vs-rest SVM on digits, 90 % magnitude pruning of w."""
    config = ml_collections.ConfigDict()
    config.kind = "svm"
    config.dataset = "digits"
    config.seed = 0
    config.C = 0.1
    config.loss = "squared_hinge"
    config.steps = 1000
    config.learning_rate = 0.1
    config.criterion = "magnitude"
    config.structure = "weights"
    config.sparsity = 0.9
    config.finetune_steps = 300
    return config
