"""A provider device's compute jobs on its session: the marketplace's offers become ``job``
frames, and the device's ``job_chunk``, ``job_done`` and ``job_fail`` frames go back to the
job's address - only for jobs this session was offered, so a device can neither make up a job
nor write into another provider's."""

from __future__ import annotations

import contextlib

from actors import Address, Envelope, Overloaded, Router, Unreachable
from yggdrasil.marketplace import (
    ChatMessage,
    JobCancel,
    JobChunk,
    JobDone,
    JobFailed,
    JobOffer,
)

from .protocol import ChatMessage as WireMessage
from .protocol import Job
from .protocol import JobCancel as CancelFrame
from .protocol import JobChunk as ChunkFrame
from .protocol import JobDone as DoneFrame
from .protocol import JobFail as FailFrame


class Jobs:
    """The jobs one session was offered and has not finished: job id -> the job's address."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, Address] = {}

    def offered(self, src: Address, offer: JobOffer) -> Job | None:
        """The frame for the device, or ``None`` when the session has too many jobs already
        (the job then hears it failed)."""
        if len(self.open) >= self.limit:
            return None
        self.open[offer.job_id] = src
        return Job(
            id=offer.job_id,
            model=offer.model,
            messages=[WireMessage(m.role, m.content) for m in offer.messages],
            max_tokens=offer.max_tokens,
        )

    def cancelled(self, cancel: JobCancel) -> CancelFrame | None:
        if self.open.pop(cancel.job_id, None) is None:
            return None
        return CancelFrame(id=cancel.job_id)

    async def from_device(
        self, router: Router, src: Address, frame: ChunkFrame | DoneFrame | FailFrame
    ) -> None:
        """Send the device's frame on to its job (one the session was not offered is dropped)."""
        dst = self.open.get(frame.id)
        if dst is None:
            return
        body: JobChunk | JobDone | JobFailed
        match frame:
            case ChunkFrame(id=job_id, text=text, tokens=tokens):
                body = JobChunk(job_id, text, max(1, min(tokens, len(text))))
            case DoneFrame(id=job_id, prompt_tokens=prompt, completion_tokens=completion):
                del self.open[job_id]
                body = JobDone(job_id, max(0, prompt), max(0, completion))
            case FailFrame(id=job_id, error=error):
                del self.open[job_id]
                body = JobFailed(job_id, error[:200] or "failed")
        with contextlib.suppress(Unreachable, Overloaded):
            await router.send(Envelope(src, dst, body), activate=False)

    async def abandon(self, router: Router, src: Address) -> None:
        """The session ends: every open job fails (and fails over at once)."""
        for job_id, dst in list(self.open.items()):
            with contextlib.suppress(Unreachable, Overloaded):
                await router.send(
                    Envelope(src, dst, JobFailed(job_id, "provider disconnected")),
                    activate=False,
                )
        self.open.clear()


__all__ = ["ChatMessage", "Jobs"]
