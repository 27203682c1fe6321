"""One-shot pruning of nanoGPT's CPU-size character GPT on Shakespeare (``kind='lm'``, run by ``run_lm``).

Trains (or restores from ``checkpoint_dir``, an orbax checkpoint; '' = ``<workdir>/dense``) a 4-layer,
4-head, width-128, context-64 GPT for ``steps`` AdamW steps, then prunes every linear layer of its
blocks with ``method`` (magnitude | wanda | sparsegpt) from ``calibration`` windows of the training
split, at ``sparsity`` or ``structure=nm:N:M``. Fields: jaxprune.lm.experiment.LM_FIELDS; see
docs/lm_pruning.md.

    jaxprune run experiments/configs/gpt_shakespeare.py method=sparsegpt structure=nm:2:4 \\
        --workdir runs/gpt_sparsegpt_24
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Default LM run: 2 000 training steps, SparseGPT at 50 % unstructured, 128 calibration windows."""
    config = ml_collections.ConfigDict()
    config.kind = "lm"
    config.dataset = "shakespeare"
    config.model = "gpt"
    config.seed = 0
    config.num_layers = 4
    config.num_heads = 4
    config.width = 128
    config.context = 64
    config.steps = 2000
    config.max_train_seconds = 900.0
    config.batch_size = 32
    config.learning_rate = 1e-3
    config.method = "sparsegpt"
    config.sparsity = 0.5
    config.structure = "unstructured"
    config.calibration = 128
    config.calibration_seed = 2
    config.eval_windows = 256
    config.blocksize = 128
    config.percdamp = 0.01
    config.checkpoint_dir = ""
    config.progress = True
    return config
