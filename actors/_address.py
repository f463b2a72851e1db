"""Addresses of actors: a kind and a key. What the kinds are, and which addresses may talk to
which, is the application's business: it defines its kinds on the router and passes in the rule.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

_MAX_KEY = 512


class Address(msgspec.Struct, frozen=True, array_like=True):
    """Where an actor lives: ``<kind>/<key>``, e.g. ``network/n_1`` or ``device/n_1/phone``.

    The key may have segments of its own (``/``-separated); the application's constructors give
    them their meaning. Addresses are values: equal addresses name the same actor on every
    instance of a cluster.
    """

    kind: str
    key: str

    @classmethod
    def of(cls, kind: str, *segments: str) -> Address:
        """The address of ``kind`` with ``segments`` joined into its key; ``ValueError`` for an
        empty kind or segment, a ``/`` inside a segment, or a key longer than 512 characters."""
        if not kind or "/" in kind:
            raise ValueError("malformed address kind")
        if not segments or any(not s or "/" in s for s in segments):
            raise ValueError(f"malformed {kind} address segment")
        key = "/".join(segments)
        if len(key) > _MAX_KEY:
            raise ValueError(f"{kind} address too long")
        return cls(kind, key)

    @classmethod
    def parse(cls, text: str) -> Address:
        """The address written as ``str(address)``; ``ValueError`` on anything else."""
        kind, _, key = text.partition("/")
        return cls.of(kind, *key.split("/"))

    @property
    def segments(self) -> list[str]:
        return self.key.split("/")

    def __str__(self) -> str:
        return f"{self.kind}/{self.key}"


Rule = Callable[[Address, Address], bool]
"""``rule(src, dst)``: whether an envelope from ``src`` may reach ``dst``. The router applies it to
every envelope, local or from another instance; a refused envelope is :class:`Unreachable`,
exactly like one to an address nobody holds."""


def anyone(src: Address, dst: Address) -> bool:
    """The rule that lets every envelope pass (for tests and single-tenant uses)."""
    return True
