"""The routing engine's names, imported in one place: the integrator swaps the stand-in for
``._routing`` here, in one line."""

from ._routing_standin import (
    Candidate,
    Decision,
    Outcome,
    ProviderRouter,
    RouteRequest,
    Scored,
)

__all__ = ["Candidate", "Decision", "Outcome", "ProviderRouter", "RouteRequest", "Scored"]
