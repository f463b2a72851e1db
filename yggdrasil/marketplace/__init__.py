"""The compute marketplace: providers sell their devices' LLM compute; Yggdrasil routes each
request, streams it and settles it.

The routing engine (``_routing``, ``_quality``, ``_breaker``) is pure: it ranks the live
candidates for a request, keeps each provider's recency-weighted statistics and circuit
breaker, and says which providers to probe. See ``docs/marketplace-routing.md``.
"""

from ._breaker import BreakerSettings, BreakerState
from ._quality import Decay, Outcome
from ._routing import (
    TIE_EPSILON,
    Candidate,
    Decision,
    ProviderRouter,
    ProviderStats,
    RouteRequest,
    Scored,
    Weights,
)

__all__ = [
    "TIE_EPSILON",
    "BreakerSettings",
    "BreakerState",
    "Candidate",
    "Decay",
    "Decision",
    "Outcome",
    "ProviderRouter",
    "ProviderStats",
    "RouteRequest",
    "Scored",
    "Weights",
]
