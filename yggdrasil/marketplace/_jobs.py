"""One job on one provider: offered to its device session from ``job/<job_id>``, read back until
it is done, fails, times out, or the caller stops it. See ``docs/marketplace.md``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import trio

from actors import Address, Envelope, Mailbox, Overflow, Overloaded, Router, Unreachable

from .._addresses import job_address
from .._ids import new_id
from ._messages import ChatMessage, JobCancel, JobChunk, JobDone, JobFailed, JobOffer

Outcome = Literal["served", "failed", "timeout", "unreachable"]


@dataclass
class JobResult:
    outcome: Outcome
    error: str | None = None
    ttft_ms: int | None = None
    duration_ms: int = 0
    chunks: int = 0
    stopped: bool = False
    """The caller stopped the stream (a cap): still ``served``."""


async def run_job(
    router: Router,
    device: Address,
    model: str,
    messages: list[ChatMessage],
    max_tokens: int,
    *,
    accept: Callable[[str, int], bool],
    first_timeout_s: float,
    total_timeout_s: float,
    queue: int,
) -> JobResult:
    """Offer one job to ``device`` and feed its chunks to ``accept(text, tokens)`` (which
    answers whether to go on). Nothing from another sender than ``device`` counts. The job's
    address is given up on the way out, whatever happens (cancellation included)."""
    job_id = new_id("job")
    address = job_address(job_id)
    box: Mailbox[Envelope] = Mailbox(queue, Overflow.WAIT)
    await router.register(address, box)
    started = trio.current_time()
    result: JobResult | None = None
    try:
        try:
            offer = JobOffer(job_id, model, messages, max_tokens)
            await router.send(Envelope(address, device, offer))
        except (Unreachable, Overloaded):
            return JobResult("unreachable", "the provider is not connected")
        first_at: float | None = None
        chunks = 0
        while True:
            limit = started + (first_timeout_s if first_at is None else total_timeout_s)
            envelope: Envelope | None = None
            with trio.move_on_at(limit):
                envelope = await box.get()
            now = trio.current_time()
            ttft = None if first_at is None else int((first_at - started) * 1000)
            duration = int((now - started) * 1000)
            if envelope is None:
                result = JobResult("timeout", "the provider did not answer in time", ttft, duration)
                return result
            if envelope.src != device:
                continue
            match envelope.body:
                case JobChunk(text=text, tokens=tokens):
                    if first_at is None:
                        first_at = now
                    chunks += 1
                    if not accept(text, tokens):
                        ttft = int((first_at - started) * 1000)
                        result = JobResult("served", None, ttft, duration, chunks, stopped=True)
                        return result
                case JobDone():
                    result = JobResult("served", None, ttft, duration, chunks)
                    return result
                case JobFailed(error=error):
                    result = JobResult("failed", error, ttft, duration, chunks)
                    return result
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            if result is None or result.outcome == "timeout" or result.stopped:
                with contextlib.suppress(Unreachable, Overloaded):
                    await router.send(Envelope(address, device, JobCancel(job_id)), activate=False)
            await router.unregister(address, box)
            box.close()
