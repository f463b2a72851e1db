"""The compute marketplace: providers sell their devices' LLM compute; requests are held,
routed, streamed from a provider's device session and settled to the cent.

The routing engine (``_routing``, ``_quality``, ``_breaker``) is pure: it ranks the live
candidates for a request, keeps each provider's recency-weighted statistics and circuit
breaker, and says which providers to probe (``docs/marketplace-routing.md``). The service owns
the ``marketplace_providers``, ``marketplace_requests`` and ``marketplace_disputes`` tables. A
request's job lives at ``job/<job_id>`` while it runs (:mod:`._messages`); the relay turns its
offers into ``job`` frames for the provider's device. See ``docs/marketplace.md``.
"""

from ._breaker import BreakerSettings, BreakerState
from ._jobs import JobResult, run_job
from ._messages import (
    MARKETPLACE_MESSAGES,
    ChatMessage,
    JobCancel,
    JobChunk,
    JobDone,
    JobFailed,
    JobOffer,
)
from ._privacy import MarketplaceData
from ._quality import Decay, Outcome
from ._retention import purge_requests
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
from ._service import (
    ECHO,
    DeviceOffline,
    DisputeRefused,
    Marketplace,
    NotRunningHere,
    PayoutMethodRequired,
    ProviderSpec,
    ProviderTestFailed,
    RequestEnded,
    RequestFailed,
    count_tokens,
)
from ._views import (
    Attempt,
    ComputeRequest,
    Dispute,
    Hardware,
    Provider,
    ProviderAnalytics,
    QualitySettings,
    RequesterAnalytics,
    RequestState,
    RoutingDecision,
    Score,
    Transaction,
    TransactionPage,
    Usage,
    Window,
)

__all__ = [
    "ECHO",
    "MARKETPLACE_MESSAGES",
    "TIE_EPSILON",
    "Attempt",
    "BreakerSettings",
    "BreakerState",
    "Candidate",
    "ChatMessage",
    "ComputeRequest",
    "Decay",
    "Decision",
    "DeviceOffline",
    "Dispute",
    "DisputeRefused",
    "Hardware",
    "JobCancel",
    "JobChunk",
    "JobDone",
    "JobFailed",
    "JobOffer",
    "JobResult",
    "Marketplace",
    "MarketplaceData",
    "NotRunningHere",
    "Outcome",
    "PayoutMethodRequired",
    "Provider",
    "ProviderAnalytics",
    "ProviderRouter",
    "ProviderSpec",
    "ProviderStats",
    "ProviderTestFailed",
    "QualitySettings",
    "RequestEnded",
    "RequestFailed",
    "RequestState",
    "RequesterAnalytics",
    "RouteRequest",
    "RoutingDecision",
    "Score",
    "Scored",
    "Transaction",
    "TransactionPage",
    "Usage",
    "Weights",
    "Window",
    "count_tokens",
    "purge_requests",
    "run_job",
]
