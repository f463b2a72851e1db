"""A small supervised-actor runtime for trio: supervisors, bounded mailboxes, a router, a bus.

Knows nothing of devices or money.
"""

from ._actor import Actor, actor_spec
from ._address import Address, may_deliver
from ._bus import Bus, InProcessBus, InProcessHub
from ._envelope import Envelope
from ._errors import (
    ActorError,
    AddressInUse,
    Escalated,
    Overloaded,
    RequestTimeout,
    Unreachable,
)
from ._mailbox import ByteBudget, Mailbox, MailboxStatistics, Overflow
from ._router import Router, RouterStatistics
from ._supervisor import ChildSpec, ChildStatistics, Restart, Strategy, Supervisor

__all__ = [
    "Actor",
    "ActorError",
    "Address",
    "AddressInUse",
    "Bus",
    "ByteBudget",
    "ChildSpec",
    "ChildStatistics",
    "Envelope",
    "Escalated",
    "InProcessBus",
    "InProcessHub",
    "Mailbox",
    "MailboxStatistics",
    "Overflow",
    "Overloaded",
    "RequestTimeout",
    "Restart",
    "Router",
    "RouterStatistics",
    "Strategy",
    "Supervisor",
    "Unreachable",
    "actor_spec",
    "may_deliver",
]
