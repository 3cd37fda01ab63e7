"""Routing conformance: checks anyone can run on a router function, ours or theirs (conformance.py),
and the float64 loops of every routing rule they compare against (reference.py).

    from moe.testing import RouterSpec, check_router
    check_router(my_router, RouterSpec(n_experts=64, top_k=8, renormalize=False))
"""

from moe.testing.conformance import (
    CHECKS,
    RouterConformanceError,
    RouterSpec,
    check_balance_loss,
    check_capacity_order,
    check_router,
    check_z_loss,
    our_router,
    spec_of,
)
from moe.testing.reference import expert_choice_reference, route_reference

__all__ = [
    "CHECKS",
    "RouterConformanceError",
    "RouterSpec",
    "check_balance_loss",
    "check_capacity_order",
    "check_router",
    "check_z_loss",
    "our_router",
    "spec_of",
    "expert_choice_reference",
    "route_reference",
]
