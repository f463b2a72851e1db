"""Addresses of actors and the tenant rule that decides which envelopes may be delivered."""

from __future__ import annotations

from typing import Literal

import msgspec

Kind = Literal["device", "network", "provider", "service"]

# How many path segments follow the kind, and whether the first of them is the network.
_SHAPES: dict[str, tuple[int, bool]] = {
    "device": (2, True),
    "network": (1, True),
    "provider": (1, False),
    "service": (1, False),
}
_MAX_SEGMENT = 128


class Address(msgspec.Struct, frozen=True, array_like=True):
    """Where an actor lives: ``device/<network>/<device>``, ``network/<network>``,
    ``provider/<provider>`` or ``service/<name>``.

    ``network`` is the tenant the address belongs to, or ``None`` for providers and services.
    """

    kind: Kind
    network: str | None
    name: str

    @classmethod
    def device(cls, network: str, device: str) -> Address:
        return cls._checked("device", network, device)

    @classmethod
    def of_network(cls, network: str) -> Address:
        return cls._checked("network", network, network)

    @classmethod
    def provider(cls, provider: str) -> Address:
        return cls._checked("provider", None, provider)

    @classmethod
    def service(cls, name: str) -> Address:
        return cls._checked("service", None, name)

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse the textual form; raise ``ValueError`` on anything else."""
        kind, _, rest = text.partition("/")
        shape = _SHAPES.get(kind)
        if shape is None:
            raise ValueError(f"unknown address kind {kind!r}")
        parts = rest.split("/")
        if len(parts) != shape[0]:
            raise ValueError(f"malformed {kind} address")
        if kind == "device":
            return cls.device(parts[0], parts[1])
        if kind == "network":
            return cls.of_network(parts[0])
        if kind == "provider":
            return cls.provider(parts[0])
        return cls.service(parts[0])

    @classmethod
    def _checked(cls, kind: Kind, network: str | None, name: str) -> Address:
        for segment in (network, name):
            if segment is None:
                continue
            if not segment or len(segment) > _MAX_SEGMENT or "/" in segment:
                raise ValueError(f"malformed {kind} address segment")
        return cls(kind, network, name)

    def __str__(self) -> str:
        if self.kind == "device":
            return f"device/{self.network}/{self.name}"
        return f"{self.kind}/{self.name}"


def may_deliver(src: Address, dst: Address) -> bool:
    """The tenant rule (ARCHITECTURE.md, Messages).

    An envelope may pass when both ends are in the same network, or when one end is a service:
    services (marketplace, locks) are tenant-aware themselves and answer only what the sender may
    know. Everything else, including any envelope from a device to a provider address, is refused.
    """
    if src.kind == "service" or dst.kind == "service":
        return True
    return src.network is not None and src.network == dst.network
