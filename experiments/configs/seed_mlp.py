"""The classic tutorial example done right: a 784-128-10 MLP, Adam 1e-3, 5 epochs, magnitude pruning
50 %, evaluated. ``finetune_epochs=2`` turns fine-tuning on. ``dataset=auto`` picks Fashion-MNIST when
its files are found, else scikit-learn's digits.

    jaxprune run experiments/configs/seed_mlp.py --workdir runs/seed_mlp
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.kind = "nn"
    config.dataset = "auto"
    config.data_dir = ml_collections.FieldReference(None, field_type=str)
    config.validation_size = 0  # train on the whole training split; report test accuracy
    config.model = "tutorial_mlp"
    config.epochs = 5
    config.batch_size = 32  # Keras' default, as in the tutorial
    config.learning_rate = 1e-3
    config.finetune_learning_rate = ml_collections.FieldReference(None, field_type=float)
    config.seed = 0
    config.method = "one_shot"
    config.scorer = "magnitude"
    config.allocation = "global"  # one magnitude threshold across layers (torch global_unstructured)
    config.structure = "unstructured"
    config.sparsity = 0.5
    config.finetune_epochs = 0
    # Training-time methods (gradual_magnitude, set, rigl, imp, ...): see docs/methods.md.
    config.prune_begin = 0.0  # fraction of training where gradual pruning / DST updates start
    config.prune_end = 0.75  # ... and end (RigL's T_end)
    config.update_every = 100  # steps between mask updates
    config.drop_fraction = 0.3  # SET/RigL initial drop fraction alpha (cosine-decayed)
    config.imp_rate = 0.2  # IMP: fraction of remaining weights pruned per round (hidden layers)
    config.imp_output_rate = 0.1  # IMP: per-round rate of the output layer
    config.rewind_epoch = 0  # IMP: 0 rewinds to init; e > 0 rewinds to the end of epoch e
    config.rewind_step = 0  # IMP: k > 0 rewinds to the params after k steps (Frankle et al. 2020)
    config.pai_rounds = 100  # SynFlow iterations
    config.grasp_temperature = 200.0  # GraSP: logits / T before the Hessian (the authors' T = 200)
    # Neuron/channel pruning (structure=neurons|channels): see docs/shrink.md.
    config.criterion = "none"  # entropy | apoz | hoyer | stability | variance | l1 | l2 | taylor | random
    config.calibration_batches = 10  # batches of training data for activation statistics
    config.shrink = False  # physically remove the pruned units (smaller model, fewer FLOPs)
    config.mean_replacement = False  # fold removed units' mean activation into the next bias
    config.latency_batch = 256  # batch size of the latency measurement
    config.latency_fast = False  # time both models under fast_convs + fast_attention (docs/shrink.md)
    # Quantization and precision: see docs/quantization.md.
    config.quantize = "none"  # int8 | int4 (post-training, per output channel, zeros stay zero)
    config.qat_epochs = 0  # pruning-preserving quantization-aware fine-tuning epochs
    config.precision = "f32"  # bf16 | f16 compute (params stay float32)
    # Scale-out and preemption: see docs/scale.md.
    config.mesh = ""  # e.g. 'data:4' (data-parallel over 4 devices); '' = default device
    config.checkpoint_every = 0  # steps between checkpoints in workdir/checkpoints (0 = off)
    # Runs with the same dense phase (a sweep over sparsity/criterion) train it once here (docs/sweeps.md).
    config.dense_cache_dir = ml_collections.FieldReference(None, field_type=str)
    config.progress = True
    return config
