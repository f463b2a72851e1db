"""The marketplace's messages between actors (tagged msgspec Structs, so the bus carries them
between instances unchanged; :data:`MARKETPLACE_MESSAGES` joins the router's codec).

A request's job lives at ``job/<job_id>`` (a cluster-wide address registered by the instance that
settles the request, for as long as the job runs). It offers the job to the provider's device
session (``device/<network>/<device>``) with :class:`JobOffer`; the session turns the device's
job frames into :class:`JobChunk`, :class:`JobDone` and :class:`JobFailed`, sent back to the job's
address (and only for jobs it was offered). :class:`JobCancel` tells the session, and so the
device, to stop.
"""

from __future__ import annotations

import msgspec


class ChatMessage(msgspec.Struct, frozen=True):
    role: str
    content: str


class JobOffer(msgspec.Struct, frozen=True, tag="mkt.offer"):
    job_id: str
    model: str
    messages: list[ChatMessage]
    max_tokens: int


class JobCancel(msgspec.Struct, frozen=True, tag="mkt.cancel"):
    job_id: str


class JobChunk(msgspec.Struct, frozen=True, tag="mkt.chunk"):
    job_id: str
    text: str
    tokens: int


class JobDone(msgspec.Struct, frozen=True, tag="mkt.done"):
    job_id: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class JobFailed(msgspec.Struct, frozen=True, tag="mkt.failed"):
    job_id: str
    error: str


JobEvent = JobChunk | JobDone | JobFailed

MARKETPLACE_MESSAGES: tuple[type[msgspec.Struct], ...] = (
    JobOffer,
    JobCancel,
    JobChunk,
    JobDone,
    JobFailed,
)
