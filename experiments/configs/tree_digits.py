"""Decision-tree pruning on scikit-learn's bundled digits (``kind='tree'``, run by ``run_tree``).

Fields: dataset ('digits' | 'breast_cancer'), seed, criterion ('gini' | 'entropy'), max_depth (None =
grow until pure), min_samples_leaf, method ('none' | 'ccp' | 'reduced_error'), ccp_alpha ('auto' = the
path alpha best on the validation split, or a number; a numeric string is accepted), validation_fraction
(of the non-test data, used by 'auto' and reduced-error pruning), test_fraction.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Default tree experiment: CART (gini) on digits, cost-complexity pruning with alpha chosen on validation."""
    config = ml_collections.ConfigDict()
    config.kind = "tree"
    config.dataset = "digits"
    config.seed = 0
    config.criterion = "gini"
    config.max_depth = None
    config.min_samples_leaf = 1
    config.method = "ccp"
    # object-typed so a command-line override may replace 'auto' with a float (ConfigDict locks types).
    config.ccp_alpha = ml_collections.FieldReference("auto", field_type=object)
    config.validation_fraction = 0.2
    config.test_fraction = 0.25
    return config
