"""A small supervised-actor runtime for trio: supervisors, bounded mailboxes, a router, a bus.

Knows nothing of devices or money.
"""

from ._actor import Actor, actor_spec, is_urgent
from ._address import Address, Rule, anyone
from ._bus import Bus, InProcessBus, InProcessHub
from ._envelope import Codec, Envelope, Urgent
from ._errors import (
    ActorError,
    AddressInUse,
    Escalated,
    Overloaded,
    RequestTimeout,
    Unreachable,
)
from ._mailbox import ByteBudget, Mailbox, MailboxStatistics, Overflow
from ._router import Kind, Placement, Router, RouterStatistics
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
    "Codec",
    "Envelope",
    "Escalated",
    "InProcessBus",
    "InProcessHub",
    "Kind",
    "Mailbox",
    "MailboxStatistics",
    "Overflow",
    "Overloaded",
    "Placement",
    "RequestTimeout",
    "Restart",
    "Router",
    "RouterStatistics",
    "Rule",
    "Strategy",
    "Supervisor",
    "Unreachable",
    "Urgent",
    "actor_spec",
    "anyone",
    "is_urgent",
]
