"""The compute marketplace: providers sell their devices' LLM compute; requests are held,
routed, streamed from a provider's device session and settled to the cent.

Owns the ``marketplace_providers``, ``marketplace_requests`` and ``marketplace_disputes`` tables.
A request's job lives at ``job/<job_id>`` while it runs (:mod:`._messages`); the relay turns its
offers into ``job`` frames for the provider's device. See ``docs/marketplace.md``.
"""

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
from ._service import (
    ECHO,
    DeviceOffline,
    Marketplace,
    PayoutMethodRequired,
    ProviderSpec,
    ProviderTestFailed,
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
    "Attempt",
    "ChatMessage",
    "ComputeRequest",
    "DeviceOffline",
    "Dispute",
    "Hardware",
    "JobCancel",
    "JobChunk",
    "JobDone",
    "JobFailed",
    "JobOffer",
    "JobResult",
    "Marketplace",
    "PayoutMethodRequired",
    "Provider",
    "ProviderAnalytics",
    "ProviderSpec",
    "ProviderTestFailed",
    "QualitySettings",
    "RequestFailed",
    "RequestState",
    "RequesterAnalytics",
    "RoutingDecision",
    "Score",
    "Transaction",
    "TransactionPage",
    "Usage",
    "Window",
    "count_tokens",
    "run_job",
]
