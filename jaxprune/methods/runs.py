"""The training-time methods of ``jaxprune run method=...``, each built from the core pieces.

| method | what | reference |
|---|---|---|
| ``none`` | dense training only | — |
| ``one_shot`` / ``global_one_shot`` | train dense, prune once (layerwise / global), fine-tune | Han et al. 2015 |
| ``gradual_magnitude`` / ``global_gradual_magnitude`` | cubic schedule during training | Zhu & Gupta 2017 |
| ``ste`` | sparse forward, straight-through gradient to dense weights | Bengio 2013; Zhou 2021 |
| ``static_sparse`` | random ERK mask at init, fixed | Evci et al. 2020 (baseline) |
| ``set`` / ``rigl`` | drop smallest, regrow random / largest gradient | Mocanu 2018; Evci 2020 |
| ``imp`` / ``imp_random_reinit`` | lottery-ticket IMP with rewinding / its control | Frankle & Carbin 2019 |
| ``snip`` / ``grasp`` / ``synflow`` | pruning at initialization, then training | Lee 2019; Wang 2020; Tanaka 2020 |

Methods that never train a dense network report ``dense_test_accuracy: null``.
"""

from __future__ import annotations

import math
import jax
import optax

from jaxprune.allocate import uniform_sparsity
from jaxprune.data import batches
from jaxprune.errors import ConfigError
from jaxprune.harness import (MethodOutput, Run, accuracy, apply_and_evaluate, finetune_masked, prune,
                              register_method, run_structure, steps_per_epoch, train, train_dense)
from jaxprune.masks import apply_masks, dense_masks
from jaxprune.methods.dst import (check_room_to_regrow, dst_schedule, dst_update, random_sparse_masks,
                                  ste_forward)
from jaxprune.methods.pai import grasp_scores, snip_scores, synflow_masks
from jaxprune.methods.structured import STRUCTURED, structured_one_shot
from jaxprune.models import init_params
from jaxprune.paths import leaf_paths, selected_paths
from jaxprune.recipes import mask_update, select_masks
from jaxprune.select import topk_masks
from jaxprune.scores import magnitude_scores
from jaxprune.train import get_masks, masked, polynomial, pruning
from jaxprune.train.loop import call_model
from jaxprune.train.transform import get_snapshot, snapshot

__all__ = ["imp_rounds"]


def _finish(run: Run, params, model_state, masks, dense_acc=None) -> MethodOutput:
    """Apply the masks, evaluate, fine-tune with them fixed (epochs numbered after training)."""
    params, pruned_acc = apply_and_evaluate(run, params, model_state, masks)
    params, model_state = finetune_masked(run, params, model_state, masks, first_epoch=run.config.epochs)
    return MethodOutput(params, model_state, masks, dense_acc, pruned_acc)


@register_method("none")
def dense_only(run: Run) -> MethodOutput:
    """Train dense; no pruning (the baseline row of every table)."""
    state = train_dense(run)
    acc = accuracy(run, state.params, state.model_state)
    return MethodOutput(state.params, state.model_state, dense_masks(state.params), acc, acc)


def _one_shot(run: Run, allocation: str) -> MethodOutput:
    c = run.config
    if c.structure in STRUCTURED:
        return structured_one_shot(run)
    state = train_dense(run)
    dense_acc = accuracy(run, state.params, state.model_state)
    masks = prune(run, state.params, state.model_state, c.sparsity, allocation=allocation)
    return _finish(run, state.params, state.model_state, masks, dense_acc)


@register_method("one_shot")
def one_shot(run: Run) -> MethodOutput:
    """Train dense, prune once to the target with the configured scorer, fine-tune with fixed masks.

    With ``structure=neurons|channels|heads`` the run goes to
    :func:`jaxprune.methods.structured.structured_one_shot` (unit criteria, optional shrink).
    """
    return _one_shot(run, run.config.allocation)


@register_method("global_one_shot")
def global_one_shot(run: Run) -> MethodOutput:
    """One-shot pruning with one global threshold (whatever ``allocation`` says; recorded as such)."""
    return _one_shot(run, "global").with_extra(allocation="global")


def _gradual(run: Run, allocation: str) -> MethodOutput:
    c = run.config
    total = c.epochs * steps_per_epoch(run)
    begin = int(c.prune_begin * total)
    end = max(begin + 1, int(c.prune_end * total))
    tx = pruning(optax.adam(c.learning_rate),
                 update_masks=mask_update(c.scorer, allocation=allocation,
                                          structure=run_structure(
                                              run, run.variables["params"],
                                              {k: v for k, v in run.variables.items() if k != "params"})),
                 schedule=polynomial(0.0, c.sparsity, begin, end, every=c.update_every),
                 seed=c.seed)
    state = train(run, tx, "gradual")
    return _finish(run, state.params, state.model_state, get_masks(state.opt_state))


@register_method("gradual_magnitude")
def gradual_magnitude(run: Run) -> MethodOutput:
    """Zhu & Gupta 2017: s_t rises cubically from 0 to the target between prune_begin and prune_end."""
    return _gradual(run, run.config.allocation if run.config.allocation != "global" else "uniform")


@register_method("global_gradual_magnitude")
def global_gradual_magnitude(run: Run) -> MethodOutput:
    """Gradual magnitude pruning with one global threshold at each mask update."""
    return _gradual(run, "global")


@register_method("ste")
def ste(run: Run) -> MethodOutput:
    """Straight-through estimator: dense weights trained through a magnitude-sparse forward."""
    c = run.config
    state = train(run, optax.adam(c.learning_rate), "ste", loss_transform=ste_forward(c.sparsity))
    masks = topk_masks(magnitude_scores(state.params), uniform_sparsity(state.params, c.sparsity))
    return _finish(run, state.params, state.model_state, masks)


def _sparse_from_init(run: Run, update=None, schedule=None) -> MethodOutput:
    c = run.config
    masks = random_sparse_masks(run.variables["params"], c.sparsity, jax.random.fold_in(run.key, 3),
                                allocation="erk" if c.allocation in ("erk", "global") else "uniform")
    if update is not None:
        # Leaves that the allocation leaves dense (ERK keeps small layers dense) stay dense and are
        # not updated, as in Evci et al. 2020; only leaves with zeros drop and regrow.
        paths = leaf_paths(masks)
        sparse = [p for p, m in zip(paths, jax.tree.leaves(masks)) if not bool(m.all())]
        if not sparse:
            check_room_to_regrow(masks, run.variables["params"])  # raises: nothing to regrow into
        update = update(sparse)
    tx = pruning(optax.adam(c.learning_rate), update_masks=update, schedule=schedule,
                 initial_masks=masks, seed=c.seed)
    state = train(run, tx, c.method)
    return _finish(run, state.params, state.model_state, get_masks(state.opt_state))


@register_method("static_sparse")
def static_sparse(run: Run) -> MethodOutput:
    """A random mask at init (ERK per-layer sparsity unless allocation=uniform), never changed."""
    return _sparse_from_init(run)


def _dst(run: Run, regrow: str) -> MethodOutput:
    c = run.config
    end = max(1, int(c.prune_end * c.epochs * steps_per_epoch(run)))
    return _sparse_from_init(run, lambda include: dst_update(regrow, c.drop_fraction, end,
                                                             include=include),
                             dst_schedule(c.sparsity, every=c.update_every, end=end))


@register_method("set")
def set_method(run: Run) -> MethodOutput:
    """SET (Mocanu et al. 2018): drop the smallest weights, regrow as many at random."""
    return _dst(run, "random")


@register_method("rigl")
def rigl(run: Run) -> MethodOutput:
    """RigL (Evci et al. 2020): drop the smallest weights, regrow where |gradient| is largest."""
    return _dst(run, "gradient")


def imp_rounds(target: float, rate: float) -> int:
    """Rounds of IMP at ``rate`` per round needed to reach ``target`` sparsity.

    >>> imp_rounds(0.9, 0.2), imp_rounds(0.5, 0.2)
    (11, 4)
    """
    if target <= 0:
        return 0
    if not 0 < rate < 1:
        raise ConfigError(f"config field 'imp_rate' must be in (0, 1), got {rate}")
    return max(1, math.ceil(math.log(1 - min(target, 1 - 1e-12)) / math.log(1 - rate) - 1e-9))


def _rewind_step(run: Run) -> int:
    """The step survivors rewind to: ``rewind_step``, or ``rewind_epoch`` x steps per epoch."""
    c = run.config
    # Signs and "not both" were checked with the other fields (harness.schema); the step count
    # needs the data's size, so this check is here.
    step, epoch = int(c.get("rewind_step", 0)), int(c.get("rewind_epoch", 0))
    step = step or epoch * steps_per_epoch(run)
    total = c.epochs * steps_per_epoch(run)
    if step >= total:
        raise ConfigError(f"config field 'rewind_step'/'rewind_epoch' points to step {step}, not "
                          f"before the end of the first IMP round ({total} steps)")
    return step


def _imp(run: Run, rewind: bool) -> MethodOutput:
    c = run.config
    params0 = run.variables["params"]
    paths = leaf_paths(params0)
    kernels = selected_paths(params0)  # the default selection, as uniform_sparsity below uses
    output = kernels[-1]  # the output layer is pruned at its own (lower) rate
    n_out = int(jax.tree.leaves(params0)[paths.index(output)].size)
    n_all = sum(int(x.size) for p, x in zip(paths, jax.tree.leaves(params0)) if p in kernels)
    rounds = imp_rounds(c.sparsity, c.imp_rate)
    tx = optax.adam(c.learning_rate)
    rewind_params = params0
    masks = jax.tree.map(lambda x: x == x, params0)
    dense_acc = None
    state_model = {k: v for k, v in run.variables.items() if k != "params"}
    rewind_step = _rewind_step(run)
    for r in range(rounds + 1):
        round_tx = masked(tx, masks)
        if r == 0 and rewind_step > 0:  # late rewinding (Frankle et al. 2020): copy taken in-step
            round_tx = snapshot(round_tx, rewind_step)
        st = train(run, round_tx, f"imp round {r}", seed=c.seed + r,
                   variables={"params": apply_masks(rewind_params, masks), **state_model})
        if r == 0 and rewind_step > 0:
            rewind_params = get_snapshot(st.opt_state)
        state, state_model = st, st.model_state
        if r == 0:
            dense_acc = accuracy(run, st.params, st.model_state)
        if r == rounds:
            break
        # Round r+1 targets: output layer at its own rate, the rest sized so the total is exact.
        s_out = 1 - (1 - c.imp_output_rate) ** (r + 1)
        s_tot = c.sparsity if r + 1 == rounds else 1 - (1 - c.imp_rate) ** (r + 1)
        s_hid = min(1.0, max(0.0, (s_tot * n_all - s_out * n_out) / (n_all - n_out)))
        sp = uniform_sparsity(st.params, s_hid, overrides={output: s_out})
        masks = topk_masks(magnitude_scores(apply_masks(st.params, masks)), sp)
        if not rewind:  # the control: same masks, fresh random initialisation
            fresh = init_params(run.model, jax.random.fold_in(run.key, 100 + r),
                                (1, *run.train[0].shape[1:]))
            rewind_params = fresh["params"]
    acc = accuracy(run, state.params, state.model_state)
    return MethodOutput(state.params, state.model_state, masks, dense_acc, acc,
                        extra={"imp_rounds": rounds})


@register_method("imp")
def imp(run: Run) -> MethodOutput:
    """Lottery-ticket IMP: train, prune imp_rate of the remaining weights, rewind survivors, repeat."""
    return _imp(run, rewind=True)


@register_method("imp_random_reinit")
def imp_random_reinit(run: Run) -> MethodOutput:
    """IMP's control: the same pruning rounds, but survivors are re-initialised at random."""
    return _imp(run, rewind=False)


def _pai(run: Run, which: str) -> MethodOutput:
    c = run.config
    params = run.variables["params"]
    model_state = {k: v for k, v in run.variables.items() if k != "params"}

    def logits(p, x):
        return call_model(run.model, p, model_state, x, train=False)[0]

    if which == "synflow":
        masks = synflow_masks(logits, params, (1, *run.train[0].shape[1:]), c.sparsity,
                              rounds=c.pai_rounds)
    else:
        b = next(iter(batches(*run.train, c.batch_size, seed=c.seed, epoch=0)))

        # GraSP's Hessian is taken at softened logits (z / T, T = 200 in the authors' code); with
        # T = 1 its masks keep mostly positive first-layer weights and the MLP trains to chance.
        temp = float(c.get("grasp_temperature", 200.0)) if which == "grasp" else 1.0
        if temp <= 0:
            raise ConfigError(f"config field 'grasp_temperature' must be > 0, got {temp}")

        def loss(p):
            z = logits(p, b.images) / temp
            return optax.softmax_cross_entropy_with_integer_labels(z, b.labels).mean()

        scores = (snip_scores if which == "snip" else grasp_scores)(loss, params)
        masks = select_masks(params, scores, c.sparsity, allocation=c.allocation,
                             structure=run_structure(run, params, model_state))
    state = train(run, masked(optax.adam(c.learning_rate), masks), which,
                  variables={"params": apply_masks(params, masks), **model_state})
    return _finish(run, state.params, state.model_state, masks)


@register_method("snip")
def snip(run: Run) -> MethodOutput:
    """SNIP (Lee et al. 2019): prune at init by |w·g| on one batch, then train the sparse net."""
    return _pai(run, "snip")


@register_method("grasp")
def grasp(run: Run) -> MethodOutput:
    """GraSP (Wang et al. 2020): prune at init keeping high θ⊙Hg (gradient flow), then train."""
    return _pai(run, "grasp")


@register_method("synflow")
def synflow(run: Run) -> MethodOutput:
    """SynFlow (Tanaka et al. 2020): data-free iterative synaptic-flow pruning at init, then train."""
    return _pai(run, "synflow")
