"""Structural pruning of any JAX model: trace it, find the coupled units, shrink it for real.

``trace`` (:mod:`jaxprune.structure.graph`) groups every parameter axis that must shrink together;
:mod:`~jaxprune.structure.importance` scores groups and selects units; :mod:`~jaxprune.structure.rebuild`
makes a model of the user's kind fit the smaller variables; :func:`prune_structured` does it all in one
call. ``docs/structure.md`` has the guide.
"""

from jaxprune.structure.api import (
    StructuredPlan,
    apply_plan,
    kept_shapes,
    prune_structured,
    shrink_like,
    structured_plan,
)
from jaxprune.structure.graph import Graph, Group, Member, trace, trace_linen, trace_nnx
from jaxprune.structure.importance import (
    activation_group_scores,
    group_scores,
    ignored_groups,
    select_units,
)
from jaxprune.structure.rebuild import rebuild

__all__ = [
    "Graph",
    "Group",
    "Member",
    "StructuredPlan",
    "activation_group_scores",
    "apply_plan",
    "group_scores",
    "ignored_groups",
    "kept_shapes",
    "prune_structured",
    "rebuild",
    "select_units",
    "shrink_like",
    "structured_plan",
    "trace",
    "trace_linen",
    "trace_nnx",
]
