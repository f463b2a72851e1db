"""The one exception root of the actor runtime and its subclasses."""

from __future__ import annotations


class ActorError(Exception):
    """Root of every error this package raises on purpose."""


class Unreachable(ActorError):
    """No actor at the destination that the sender may reach.

    The same exception, with the same message, is raised for an address that does not exist and
    for one that exists behind a tenant boundary: a sender can never tell the two apart.
    """

    def __init__(self) -> None:
        super().__init__("unreachable")


class Overloaded(ActorError):
    """The destination's mailbox is full and its policy rejects new envelopes."""

    def __init__(self) -> None:
        super().__init__("overloaded")


class RequestTimeout(ActorError):
    """No reply arrived before the request's deadline."""

    def __init__(self) -> None:
        super().__init__("request timed out")


class AddressInUse(ActorError):
    """An actor is already registered at that address on this router."""


class Escalated(ActorError):
    """A supervisor exceeded its restart intensity and gave up; its parent decides what follows."""
