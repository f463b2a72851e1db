"""The routing engine's names, as the request flow uses them (``docs/marketplace-routing.md``)."""

from ._quality import Outcome
from ._routing import Candidate, Decision, ProviderRouter, RouteRequest, Scored

__all__ = ["Candidate", "Decision", "Outcome", "ProviderRouter", "RouteRequest", "Scored"]
