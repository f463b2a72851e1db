"""One actor per active tenant network: presence, the network map, and the tenant's quotas.

Started by :class:`Networks` when the network's first session joins, stopped after
``network_idle_s`` without sessions. Presence changes are numbered by a serial that grows by one
per change; each change is encoded once and the same bytes go to every member's session.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import Literal

import trio

from actors import (
    Actor,
    Address,
    ChildSpec,
    Envelope,
    Overloaded,
    Restart,
    Router,
    Supervisor,
    Unreachable,
)
from yggdrasil import RateLimiter, Store

from ._messages import Encoded, Join, Joined, Leave, Refused
from .protocol import PeerState, Presence, encode

log = logging.getLogger(__name__)


class TenantQuota:
    """Messages and bytes per second for a whole network, shared by its sessions."""

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


class NetworkActor(Actor):
    capacity = 1024

    def __init__(
        self,
        network_id: str,
        router: Router,
        store: Callable[[], Store | None],
        quota: TenantQuota,
        idle_s: float,
    ) -> None:
        super().__init__(Address.of_network(network_id), router)
        self.network_id = network_id
        self._store = store
        self.quota = quota
        self._idle_s = idle_s
        self.serial = 0
        self.devices: dict[str, PeerState] = {}
        self.sessions: dict[str, str] = {}  # device id -> session id of its live session
        self.alive = False
        self._unsaved: dict[str, tuple[Literal["online", "offline"], int]] = {}
        self._wake_saver = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[Actor] = trio.TASK_STATUS_IGNORED) -> None:
        await self._load()
        self.router.register(self.address, self.mailbox)
        self.alive = True
        task_status.started(self)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._save_presence)
                while True:
                    with trio.move_on_after(self._idle_s if not self.sessions else float("inf")):
                        envelope = await self.mailbox.get()
                        await self.handle(envelope)
                        continue
                    log.debug("network=%s idle, stopping", self.network_id)
                    nursery.cancel_scope.cancel()
                    break
        finally:
            self.alive = False
            self.mailbox.close()
            self.router.unregister(self.address, self.mailbox)
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._flush()

    async def _save_presence(self) -> None:
        """Write presence changes to the device registry in batches, off the actor's path."""
        while True:
            await self._wake_saver.wait()
            self._wake_saver = trio.Event()
            await self._flush()
            await trio.sleep(0.2)  # gather the next burst

    async def _flush(self) -> None:
        store = self._store()
        if not self._unsaved or store is None:
            return
        batch, self._unsaved = self._unsaved, {}
        try:
            await store.set_device_presence(self.network_id, batch)
        except Exception:  # presence must not die with the database; the map stays right
            log.warning("network=%s could not record presence", self.network_id, exc_info=True)

    async def handle(self, envelope: Envelope) -> None:
        match envelope.body:
            case Join(device_id=device_id, session_id=session_id):
                if device_id not in self.devices:
                    await self._load()
                if device_id not in self.devices:
                    await self._answer(envelope, Refused("unknown device"))
                    return
                self.sessions[device_id] = session_id
                # The change first: the joining device's map shows itself online, at the serial
                # the others see in their delta.
                await self._change(device_id, online=True)
                await self._answer(envelope, Joined(self.serial, list(self.devices.values())))
            case Leave(device_id=device_id, session_id=session_id):
                if self.sessions.get(device_id) == session_id:
                    del self.sessions[device_id]
                    await self._change(device_id, online=False)
            case _:
                log.warning("network=%s ignored %s", self.network_id, type(envelope.body).__name__)

    async def _answer(self, envelope: Envelope, body: object) -> None:
        if envelope.corr is not None:
            with contextlib.suppress(Unreachable):  # the session is gone already
                await self.router.reply(envelope, body)

    async def _change(self, device_id: str, *, online: bool) -> None:
        now = int(time.time() * 1000)
        # The registry learns of it in the next batch: a burst of joins costs one transaction.
        self._unsaved[device_id] = ("online" if online else "offline", now)
        self._wake_saver.set()
        current = self.devices.get(device_id)
        if current is None:
            return
        state = PeerState(current.device_id, current.name, current.world_type, online, now)
        self.devices[device_id] = state
        self.serial += 1
        frame = Encoded(encode(Presence(serial=self.serial, device=state)))
        for member in list(self.sessions):
            if member == device_id:
                continue
            try:
                await self.router.send(
                    Envelope(self.address, Address.device(self.network_id, member), frame)
                )
            except (Unreachable, Overloaded):
                # A full queue or a session on its way out: the device resyncs from the
                # network map when it reconnects, and the serial shows it missed a change.
                log.debug("network=%s presence to %s dropped", self.network_id, member)

    async def _load(self) -> None:
        store = self._store()
        if store is None:
            return
        for device in await store.network_devices(self.network_id):
            online = device.device_id in self.sessions
            self.devices.setdefault(
                device.device_id,
                PeerState(
                    device.device_id, device.name, device.world_type, online, device.last_seen
                ),
            )


class Networks:
    """Starts network actors on first use under its own supervisor."""

    def __init__(
        self,
        router: Router,
        store: Callable[[], Store | None],
        *,
        idle_s: float,
        messages_per_s: float,
        bytes_per_s: float,
    ) -> None:
        self.router = router
        self._store = store
        self._idle_s = idle_s
        self._messages_per_s = messages_per_s
        self._bytes_per_s = bytes_per_s
        self.supervisor = Supervisor("networks", max_restarts=20, period_s=10.0)
        self._starting: dict[str, trio.Event] = {}
        self.actors: dict[str, NetworkActor] = {}

    async def ensure(self, network_id: str) -> NetworkActor:
        """The running actor of ``network_id``, started if needed."""
        while True:
            actor = self.actors.get(network_id)
            if actor is not None and self.router.is_local(actor.address):
                return actor
            starting = self._starting.get(network_id)
            if starting is not None:
                await starting.wait()
                continue
            self._starting[network_id] = trio.Event()
            try:
                quota = TenantQuota(self._messages_per_s, self._bytes_per_s)
                actor = NetworkActor(network_id, self.router, self._store, quota, self._idle_s)
                spec = ChildSpec(
                    f"network/{network_id}/{id(actor)}",
                    functools.partial(self._run, actor),
                    restart=Restart.TEMPORARY,
                    shutdown_s=1.0,
                )
                await self.supervisor.start_child(spec)
                return actor
            finally:
                self._starting.pop(network_id).set()

    async def _run(
        self, actor: NetworkActor, *, task_status: trio.TaskStatus[Actor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.actors[actor.network_id] = actor
        try:
            await actor.run(task_status=task_status)
        finally:
            if self.actors.get(actor.network_id) is actor:
                del self.actors[actor.network_id]
