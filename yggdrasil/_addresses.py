"""The domain's actor addresses and the tenant rule the router applies to every envelope
(ARCHITECTURE.md, "Messages"): ``device/<network>/<device>``, ``network/<network>``,
``locks/<network>`` (the network's lock manager), ``provider/<provider>``, ``service/<name>`` and
``job/<job>`` (a marketplace job in flight: it talks only with the provider's session it was
offered to, and drops what any other sender writes).

An envelope passes when its two ends are in the same network, or when one end is a service
(services - the marketplace, locks, revocations - are tenant-aware themselves and answer only what
the sender may know). Everything else, including a device writing to a provider address, is
refused, and a refused envelope is indistinguishable from one to an address nobody holds.
"""

from __future__ import annotations

from actors import Address

DEVICE = "device"
NETWORK = "network"
LOCKS = "locks"
PROVIDER = "provider"
SERVICE = "service"
JOB = "job"


def device_address(network_id: str, device_id: str) -> Address:
    return Address.of(DEVICE, network_id, device_id)


def network_address(network_id: str) -> Address:
    return Address.of(NETWORK, network_id)


def locks_address(network_id: str) -> Address:
    return Address.of(LOCKS, network_id)


def provider_address(provider_id: str) -> Address:
    return Address.of(PROVIDER, provider_id)


def service_address(name: str) -> Address:
    return Address.of(SERVICE, name)


def job_address(job_id: str) -> Address:
    """A marketplace job in flight (cluster-wide, held by the instance that settles it)."""
    return Address.of(JOB, job_id)


def tenant_of(address: Address) -> str | None:
    """The network an address belongs to, or ``None`` (providers, services, unknown kinds)."""
    if address.kind == DEVICE:
        segments = address.segments
        return segments[0] if len(segments) == 2 else None
    if address.kind in (NETWORK, LOCKS):
        return address.key if "/" not in address.key else None
    return None


def tenant_rule(src: Address, dst: Address) -> bool:
    """Whether an envelope from ``src`` may reach ``dst`` (see the module docstring)."""
    if src.kind in (SERVICE, JOB) or dst.kind in (SERVICE, JOB):
        return True
    tenant = tenant_of(src)
    return tenant is not None and tenant == tenant_of(dst)
