"""Named recipes: config strings -> core pieces (scorer, allocation, structure) -> masks.

These glue the config vocabulary (``scorer=magnitude allocation=erk structure=nm:2:4``) to the core
functions, so the run command, the pruning transformation and the sweeps all build masks one way.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional

from jaxprune.allocate import er_sparsity, erk_sparsity, uniform_sparsity
from jaxprune.errors import ConfigError
from jaxprune.paths import Selector
from jaxprune.scores import SCORERS, compute_scores
from jaxprune.select import global_masks, topk_masks
from jaxprune.structures import STRUCTURE_ARGS, STRUCTURES, Structure, Unstructured

__all__ = ["ALLOCATIONS", "parse_structure", "select_masks", "mask_update"]

ALLOCATIONS: dict[str, Optional[Callable[..., Any]]] = {
    "uniform": uniform_sparsity,
    "erk": erk_sparsity,
    "er": er_sparsity,
    "global": None,  # one threshold across layers (global_masks)
}


def parse_structure(text: str, *, outputs: Selector = None) -> Structure:
    """A config string -> a structure from the :data:`~jaxprune.structures.STRUCTURES` registry.

    Built in: ``'unstructured'``, ``'nm:2:4'``, ``'block:4x4'``, ``'neurons'``, ``'channels'``; a
    structure added with :func:`~jaxprune.register_structure` is spelled ``name`` or, when registered
    with ``parse_arg``, ``name:ARG``. ``nm:N:M`` groups along each leaf's reduction axis (inferred for
    2-D and 4-D kernels, see :class:`~jaxprune.NM`). ``outputs`` is passed to every factory that takes
    an ``outputs`` argument (``Neurons``/``Channels``): the selector of the leaves whose units are model
    outputs (e.g. from :func:`jaxprune.wiring.output_kernels`); left at ``None`` they refuse to prune
    until told.

    >>> parse_structure('nm:2:4'), parse_structure('block:2x8')
    (NM(n=2, m=4, axis=None), Block(shape=(2, 8), reduce='mean'))
    >>> parse_structure('neurons', outputs=['params/head/kernel'])
    Neurons(axis=-1, reduce='mean', outputs=['params/head/kernel'], min_keep=1)
    """
    name, sep, arg = str(text).partition(":")
    if name in STRUCTURES:
        factory = STRUCTURES[name]
        kwargs: dict[str, Any] = {}
        try:
            if name in STRUCTURE_ARGS:
                kwargs = dict(STRUCTURE_ARGS[name][0](arg))
            elif sep:
                raise ValueError(f"{name} takes no argument")
        except ValueError:
            pass
        else:
            if _takes_outputs(factory):
                kwargs.setdefault("outputs", outputs)
            return factory(**kwargs)
    spellings = sorted(STRUCTURE_ARGS[n][1] if n in STRUCTURE_ARGS else n for n in STRUCTURES)
    raise ConfigError(f"structure={text!r} is not one of: {', '.join(spellings)}")


def _takes_outputs(factory: Callable[..., Any]) -> bool:
    try:
        return "outputs" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C factory without a signature
        return False


def check_names(scorer: str, allocation: str) -> None:
    """Raises :class:`ConfigError` for an unknown scorer or allocation name."""
    if scorer not in SCORERS:
        raise ConfigError(f"scorer={scorer!r} is unknown; known: {sorted(SCORERS)}")
    if allocation not in ALLOCATIONS:
        raise ConfigError(f"allocation={allocation!r} is unknown; known: {sorted(ALLOCATIONS)}")


def select_masks(params: Any, scores: Any, sparsity: Any, *, allocation: str = "uniform",
                 structure: Structure = Unstructured(), include: Selector = None) -> Any:
    """Masks at ``sparsity`` with the named allocation (``'global'`` = one threshold).

    >>> import jax.numpy as jnp
    >>> p = {'w': jnp.arange(1.0, 5.0).reshape(2, 2)}
    >>> select_masks(p, p, 0.5, include='w')['w'].tolist()
    [[False, False], [True, True]]
    """
    if allocation not in ALLOCATIONS:
        raise ConfigError(f"allocation={allocation!r} is unknown; known: {sorted(ALLOCATIONS)}")
    if allocation == "global":
        return global_masks(scores, sparsity, include=include, structure=structure)
    sparsities = ALLOCATIONS[allocation](params, sparsity, include=include)
    return topk_masks(scores, sparsities, structure=structure)


def mask_update(scorer: str = "magnitude", *, allocation: str = "uniform",
                structure: Structure = Unstructured(), include: Selector = None) -> Callable[..., Any]:
    """A ``(params, grads, masks, sparsity, step, key) -> masks`` function for :func:`pruning`.

    Scores are computed on the current params (pruned weights are zero, so magnitude pruning only
    ever removes more) with the step's gradients and key.

    >>> fn = mask_update('magnitude', allocation='erk')
    >>> callable(fn)
    True
    """
    check_names(scorer, allocation)

    def update(params, grads, masks, sparsity, step, key):
        del masks, step
        scores = compute_scores(scorer, params, grads=grads, key=key)
        return select_masks(params, scores, sparsity, allocation=allocation, structure=structure,
                            include=include)

    return update
