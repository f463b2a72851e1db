"""One actor per active network: presence and the network map (a virtual actor: the router starts
it on the first envelope to ``network/<id>``, wherever that lands in the cluster, and it stops
after ``gateway.network_idle_s`` without members).

Presence changes are numbered by a serial that grows by one per change; each change is encoded
once and the same bytes go to every member's session. Members are sessions, on any instance:
a session that leaves, or whose instance dies, goes offline. A new incarnation (after a crash, or
on another instance after its holder died) tells the sessions of the old one to come back.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import trio

from actors import Actor, Address, Envelope, Overloaded, Router, Supervisor, Unreachable
from yggdrasil import DomainHandle, RateLimiter, StoreUnavailable, device_address
from yggdrasil.ddns import current_addresses

from ._messages import AddressReport, Encoded, Join, Joined, Leave, Refused, Rejoin
from .protocol import PeerState, Presence, encode

log = logging.getLogger(__name__)

INSTANCE_CHECK_S = 1.0
"""How often a network looks for members whose instance has died."""


class TenantQuota:
    """Messages and bytes per second for a whole network, shared by its sessions on one
    instance (each instance keeps its own: a network spread over N instances gets up to N
    times the quota)."""

    def __init__(self, messages_per_s: float, bytes_per_s: float) -> None:
        self._messages = RateLimiter(messages_per_s, max(1, int(messages_per_s)))
        self._bytes = RateLimiter(bytes_per_s, max(1, int(bytes_per_s)))

    def take(self, size: int) -> float:
        """Count one message of ``size`` bytes and return 0, or count nothing and return the
        seconds until the network's quota would allow it."""
        wait = self._messages.take("network")
        if wait:
            return wait
        wait = self._bytes.take("network", float(size))
        if wait:
            self._messages.take("network", -1.0)  # give the message back: it was not sent
        return wait

    def wait_time(self, size: int) -> float:
        """The seconds until another message of ``size`` bytes would be allowed; takes nothing."""
        return max(self._messages.wait_time("network"), self._bytes.wait_time("network", size))


@dataclass
class _Member:
    session_id: str
    instance: str


AddressChanged = Callable[[str, str, str, list[str]], None]
"""``changed(network_id, device_id, seen, reported)``: a member's address, as its session came
from (``seen``) and as the device reported it (``reported``, empty until it does); must not
block (the ddns room's ``Ddns.address_changed``)."""


class NetworkActor(Actor):
    mailbox_capacity = 1024

    def __init__(
        self,
        address: Address,
        domain: DomainHandle,
        *,
        idle_s: float,
        on_address: AddressChanged | None = None,
    ) -> None:
        """``domain``: where the device registry is, while the store runs. ``on_address``:
        who records members' addresses (and keeps their DNS names current)."""
        super().__init__(address)
        self.network_id = address.key
        self.idle_timeout_s = idle_s
        self.incarnation = secrets.token_urlsafe(6)
        self.serial = 0
        self.devices: dict[str, PeerState] = {}
        self.members: dict[str, _Member] = {}
        self._domain = domain
        self._unsaved: dict[str, tuple[Literal["online", "offline"], int]] = {}
        self._wake_saver = trio.Event()
        self._on_address = on_address
        self._seen: dict[str, str] = {}
        """Members' addresses as their sessions come from."""
        self._reported: dict[str, list[str]] = {}
        """Members' addresses as their devices reported them (this session)."""

    def idle(self) -> bool:
        return not self.members

    async def on_start(self) -> None:
        await self._load()
        self.nursery.start_soon(self._save_presence)
        self.nursery.start_soon(self._watch_instances)
        # Sessions that joined an earlier incarnation resync (they ignore this one's own).
        for device_id in self.devices:
            with contextlib.suppress(Unreachable, Overloaded):
                await self.router.send(
                    Envelope(
                        self.address,
                        device_address(self.network_id, device_id),
                        Rejoin(self.incarnation),
                    ),
                    activate=False,
                )

    async def on_stop(self) -> None:
        await self._flush()

    async def handle(self, envelope: Envelope) -> None:
        match envelope.body:
            case Join(
                device_id=device_id, session_id=session_id, instance=instance, address=address
            ):
                if device_id not in self.devices:
                    await self._load()
                if device_id not in self.devices:
                    await self.reply(envelope, Refused("unknown device"))
                    return
                self.members[device_id] = _Member(session_id, instance)
                self._seen[device_id] = address
                self._reported.pop(device_id, None)
                self._address_changed(device_id)
                # The change first: the joining device's map shows itself online, at the serial
                # the others see in their delta.
                await self._change(device_id, online=True)
                await self.reply(
                    envelope,
                    Joined(self.serial, list(self.devices.values()), self.incarnation),
                )
            case Leave(device_id=device_id, session_id=session_id):
                member = self.members.get(device_id)
                if member is not None and member.session_id == session_id:
                    del self.members[device_id]
                    await self._change(device_id, online=False)
            case AddressReport(device_id=device_id, session_id=session_id, addresses=addresses):
                await self._on_report(device_id, session_id, addresses)
            case _:
                log.warning("network=%s ignored %s", self.network_id, type(envelope.body).__name__)

    async def _watch_instances(self) -> None:
        """Members on an instance that died left with it: nobody else will say so."""
        bus = self.router.bus
        while True:
            await trio.sleep(INSTANCE_CHECK_S)
            gone = [d for d, m in self.members.items() if not bus.alive(m.instance)]
            for device_id in gone:
                log.info("network=%s member %s lost with its instance", self.network_id, device_id)
                del self.members[device_id]
                await self._change(device_id, online=False)

    async def _save_presence(self) -> None:
        """Write presence changes to the device registry in batches, off the actor's path."""
        while True:
            await self._wake_saver.wait()
            self._wake_saver = trio.Event()
            await self._flush()
            await trio.sleep(0.2)  # gather the next burst

    async def _flush(self) -> None:
        if not self._unsaved:
            return
        try:
            store = self._domain.get().store
        except StoreUnavailable:  # kept for the next flush, once the store runs again
            return
        batch, self._unsaved = self._unsaved, {}
        try:
            await store.set_device_presence(self.network_id, batch)
        except Exception:  # presence must not die with the database; the map stays right
            log.warning("network=%s could not record presence", self.network_id, exc_info=True)

    async def _change(self, device_id: str, *, online: bool) -> None:
        now = int(time.time() * 1000)
        # The registry learns of it in the next batch: a burst of joins costs one transaction.
        self._unsaved[device_id] = ("online" if online else "offline", now)
        self._wake_saver.set()
        current = self.devices.get(device_id)
        if current is None:
            return
        addresses: list[str] = []
        if online:
            addresses = current_addresses(
                self._seen.get(device_id, ""), self._reported.get(device_id, [])
            )
        else:
            self._seen.pop(device_id, None)
            self._reported.pop(device_id, None)
        state = PeerState(
            current.device_id, current.name, current.world_type, online, now, addresses
        )
        self.devices[device_id] = state
        self.serial += 1
        frame = Encoded(encode(Presence(serial=self.serial, device=state)))
        for member in list(self.members):
            if member == device_id:
                continue
            try:
                await self.router.send(
                    Envelope(self.address, device_address(self.network_id, member), frame),
                    activate=False,
                )
            except (Unreachable, Overloaded):
                # A full queue or a session on its way out: the device resyncs from the
                # network map when it reconnects, and the serial shows it missed a change.
                log.debug("network=%s presence to %s dropped", self.network_id, member)

    async def _on_report(self, device_id: str, session_id: str, addresses: list[str]) -> None:
        """A member reported new addresses: recorded, and a presence change for the others
        when where it is reached changed (they refresh their direct connections)."""
        member = self.members.get(device_id)
        if member is None or member.session_id != session_id:
            return  # from a session that has left (or was replaced) meanwhile
        before = self.devices.get(device_id)
        self._reported[device_id] = list(addresses)
        self._address_changed(device_id)
        after = current_addresses(self._seen.get(device_id, ""), addresses)
        if before is None or before.addresses != after:
            await self._change(device_id, online=True)

    def _address_changed(self, device_id: str) -> None:
        if self._on_address is not None:
            self._on_address(
                self.network_id,
                device_id,
                self._seen.get(device_id, ""),
                self._reported.get(device_id, []),
            )

    async def _load(self) -> None:
        try:
            store = self._domain.get().store
        except StoreUnavailable:  # an empty map: joins are refused until the store runs
            return
        for device in await store.network_devices(self.network_id):
            online = device.device_id in self.members
            self.devices.setdefault(
                device.device_id,
                PeerState(
                    device.device_id, device.name, device.world_type, online, device.last_seen
                ),
            )


def network_factory(
    domain: DomainHandle, *, idle_s: float, on_address: AddressChanged | None = None
) -> Callable[[Address], NetworkActor]:
    """The router's factory for the ``network`` kind."""

    def make(address: Address) -> NetworkActor:
        return NetworkActor(address, domain, idle_s=idle_s, on_address=on_address)

    return make


def network_actors(
    router: Router,
    kind: str,
    domain: DomainHandle,
    *,
    idle_s: float,
    on_address: AddressChanged | None = None,
) -> Supervisor:
    """The ``networks`` supervisor, and ``router``'s virtual kind ``kind`` that runs under it:
    the first envelope to ``<kind>/<network>`` starts that network's actor there, and it stops
    after ``idle_s`` without members; ``on_address`` hears of members' addresses. Put
    :meth:`Supervisor.as_child` in the tree."""
    networks = Supervisor("networks", max_restarts=20, period_s=10.0)
    router.define(
        kind,
        factory=network_factory(domain, idle_s=idle_s, on_address=on_address),
        supervisor=networks,
        shutdown_s=1.0,
    )
    return networks
