"""The bus between instances over NATS (``bus.url``), for the router of each instance.

Shape (``../shared/CLUSTER.md`` has the measurements behind it):

- Subjects, under ``bus.prefix`` (``ygg``): ``<prefix>.inbox.<instance>`` - envelopes and replies
  for one instance, which alone subscribes to it; ``<prefix>.broadcast`` - envelopes for the
  per-instance services of every instance (revocations; the sender marks its own with a header
  and skips it: it delivered that one locally already); ``<prefix>.work.<address>`` - work that
  exactly one of the instances serving the address must do (``Router.dispatch``; queue group
  ``<prefix>-workers``: NATS hands each message to one member).
- The directory (JetStream key-value bucket ``<prefix>_directory``): address -> the instance that
  holds it, for every cluster-wide address (device sessions, network actors). Claiming is a
  ``create`` (it fails if the key exists), giving up a ``delete`` of exactly our revision. Every
  instance watches the bucket into a local cache, so forwarding needs no round trip and an
  address nobody holds is :class:`Unreachable` at once.
- Liveness (bucket ``<prefix>_instances``): each instance puts its heartbeat every
  ``bus.heartbeat_s``. An instance not heard from for ``bus.instance_timeout_s`` is dead: its
  directory entries are deleted by whoever notices first, and its members leave their networks.
  (NATS 2.9's key-value buckets raise no event when a key's TTL expires, so liveness is ours.)
- Between trio and nats-py (asyncio, on the loop thread of :mod:`._asyncio_thread`): one pump
  task publishes what ``forward`` queued, up to 256 envelopes per hop; nats-py's callbacks never
  touch trio objects: received messages, directory entries and connection events cross to the
  trio thread through a :class:`Handoff` or the trio token, and a full inbox channel drops and
  counts.
- Core NATS is at most once. An envelope lost on the way is like one lost with a crashed
  instance: requests time out, presence resyncs, and sessions' acknowledgements stay honest.
- An instance that loses NATS for longer than ``instance_timeout_s`` has been declared dead by
  the others: it fences itself (its cluster-wide actors end, its devices reconnect elsewhere)
  and is not ready until NATS is back.

Devices never reach NATS: it carries every tenant's traffic and takes credentials and TLS.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from actors import (
    Address,
    AddressInUse,
    Bus,
    ChildSpec,
    Codec,
    Envelope,
    InProcessHub,
    Overloaded,
    Unreachable,
)

from ._asyncio_thread import AsyncioThread, Handoff
from ._config import BusConfig
from ._errors import ConfigError, YggdrasilError

if TYPE_CHECKING:
    from actors import Router

log = logging.getLogger(__name__)

_BATCH = 256
_ORIGIN = "Ygg-Origin"
_CLAIM_ATTEMPTS = 3


class BusUnavailable(YggdrasilError):
    status = 503
    code = "bus_unavailable"
    default_message = "the bus between instances is unavailable"


def _key(address: Address) -> str:
    """A directory key: KV keys allow only ``[-/_=.a-zA-Z0-9]``, so the address is encoded."""
    return base64.urlsafe_b64encode(str(address).encode()).decode().rstrip("=")


def _address(key: str) -> Address | None:
    try:
        return Address.parse(base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)).decode())
    except (ValueError, UnicodeDecodeError):
        return None


def nats_options(config: BusConfig) -> dict[str, Any]:
    """nats-py's connection options from ``[bus]``: credentials and TLS."""
    options: dict[str, Any] = {}
    if config.user:
        options["user"] = config.user
        options["password"] = config.password
    if config.token:
        options["token"] = config.token
    if config.nkey_seed_file:
        options["nkeys_seed"] = config.nkey_seed_file
    if config.tls_ca_file or config.tls_cert_file or config.url.startswith("tls://"):
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=config.tls_ca_file or None
        )
        if config.tls_cert_file:
            context.load_cert_chain(config.tls_cert_file, config.tls_key_file or None)
        options["tls"] = context
    return options


class NatsBus:
    """The :class:`actors.Bus` of one instance over NATS; see the module docstring.

    nats-py runs on ``bridge``'s loop. :meth:`serve` connects, subscribes, syncs the directory
    and reports ready; it runs until cancelled and closes the connection on the way out.
    """

    def __init__(self, config: BusConfig, codec: Codec, bridge: AsyncioThread) -> None:
        self.config = config
        self.codec = codec
        self._bridge = bridge
        self._inbound: Handoff[bytes] | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._round = 0
        self.prefix = config.prefix
        self._router: Router | None = None
        self._me = ""
        self._nc: Any = None
        self._directory: Any = None
        self._instances: Any = None
        self._holders: dict[Address, tuple[str, int]] = {}
        self._seen: dict[str, tuple[float, int]] = {}
        """Instance -> when its heartbeat last changed (monotonic) and that entry's revision."""
        self._ours: dict[Address, int] = {}
        self._work: set[Address] = set()
        self._out_send, self._out_recv = trio.open_memory_channel[tuple[str, bytes]](
            config.outbox_size
        )
        self._in_send, self._in_recv = trio.open_memory_channel[bytes](config.inbox_size)
        self._connected = False
        self._synced = False
        self._lost_at: float | None = None
        self._resync = trio.Event()
        self._first_sync = trio.Event()
        self.fenced = False
        self.stats = {"published": 0, "received": 0, "dropped": 0, "undecodable": 0}

    # ----------------------------------------------------------------- Bus

    def attach(self, router: Router) -> None:
        self._router = router
        self._me = router.instance_id

    @property
    def ready(self) -> bool:
        return self._connected and self._synced and not self.fenced

    def statistics(self) -> dict[str, int]:
        """Counters and gauges for the metrics endpoint."""
        now = time.monotonic()
        alive = sum(
            1 for seen, _ in self._seen.values() if now - seen < self.config.instance_timeout_s
        )
        return {
            **self.stats,
            "ready": int(self.ready),
            "fenced": int(self.fenced),
            "instances": alive,
            "directory": len(self._holders),
        }

    def holder(self, address: Address) -> str | None:
        found = self._holders.get(address)
        return None if found is None else found[0]

    def alive(self, instance: str) -> bool:
        if instance == self._me:
            return not self.fenced
        seen = self._seen.get(instance)
        return seen is not None and time.monotonic() - seen[0] < self.config.instance_timeout_s

    async def claim(self, address: Address) -> None:
        if not self.ready:
            raise AddressInUse(f"{address} (the bus is not ready)")
        key = _key(address)
        for _ in range(_CLAIM_ATTEMPTS):
            current = self._holders.get(address)
            if current is not None and current[0] != self._me and self.alive(current[0]):
                raise AddressInUse(str(address))
            revision = await self._aio(self._create, key)
            if revision is not None:
                self._ours[address] = revision
                self._holders[address] = (self._me, revision)
                return
            entry = await self._aio(self._get, key)
            if entry is None:
                continue  # deleted meanwhile: try again
            holder, revision = entry
            if holder == self._me:
                self._ours[address] = revision
                self._holders[address] = (holder, revision)
                return
            if self.alive(holder):
                self._holders[address] = (holder, revision)
                raise AddressInUse(str(address))
            # Held by an instance that died: take it over (only if nobody did meanwhile).
            await self._aio(self._delete, key, revision)
        raise AddressInUse(str(address))

    async def release(self, address: Address) -> None:
        revision = self._ours.pop(address, None)
        if revision is None:
            return
        if self._holders.get(address, ("", 0))[1] == revision:
            del self._holders[address]
        with contextlib.suppress(Exception):  # a lost release expires with our liveness
            await self._aio(self._delete, _key(address), revision)

    async def forward(self, envelope: Envelope) -> None:
        if envelope.is_reply:
            instance = (envelope.corr or "").partition(":")[0]
        else:
            instance = self.holder(envelope.dst) or ""
        if not instance or instance == self._me or not self.alive(instance):
            raise Unreachable()
        self._publish(f"{self.prefix}.inbox.{instance}", envelope)

    async def broadcast(self, envelope: Envelope) -> None:
        self._publish(f"{self.prefix}.broadcast", envelope)

    async def serve_work(self, address: Address) -> None:
        self._work.add(address)
        if self._nc is not None:
            await self._aio(self._subscribe_work, address)

    async def dispatch(self, envelope: Envelope) -> None:
        self._publish(self._work_subject(envelope.dst), envelope)

    def _work_subject(self, address: Address) -> str:
        return f"{self.prefix}.work.{_key(address)}"

    def _publish(self, subject: str, envelope: Envelope) -> None:
        if not self._connected:
            raise Unreachable()
        try:
            data = self.codec.encode(envelope)
        except TypeError:
            log.error("envelope body %s cannot cross instances", type(envelope.body).__name__)
            raise Unreachable() from None
        try:
            self._out_send.send_nowait((subject, data))
        except trio.WouldBlock:
            self.stats["dropped"] += 1
            raise Overloaded() from None

    # ----------------------------------------------------------------- running

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self._router is not None, "attach the bus to a router first"
        self._token = trio.lowlevel.current_trio_token()
        self._inbound = Handoff(self._token, self._push)
        try:
            await self._aio(self._open)
        except Exception as exc:
            raise ConfigError(f"cannot use the bus at {self.config.url}: {exc}") from None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump)
                nursery.start_soon(self._deliver, nursery)
                nursery.start_soon(self._heartbeat)
                nursery.start_soon(self._watch_loop)
                nursery.start_soon(self._police)
                with trio.fail_after(self.config.connect_timeout_s):
                    await self._first_sync.wait()
                task_status.started()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await self._aio(self._close)

    # asyncio side: on the loop thread, with nats-py's callbacks; trio objects only through
    # self._inbound and self._token

    async def _open(self) -> None:
        import nats
        from nats.js.errors import BucketNotFoundError

        connect = nats.connect

        token = self._token
        assert token is not None

        async def disconnected() -> None:
            token.run_sync_soon(self._disconnected)

        async def reconnected() -> None:
            token.run_sync_soon(self._reconnected)

        async def error(exc: Exception) -> None:
            log.warning("bus: %s", exc)

        self._nc = await connect(
            self.config.url,
            name=f"yggdrasil {self._me}",
            connect_timeout=self.config.connect_timeout_s,
            reconnect_time_wait=self.config.reconnect_wait_s,
            max_reconnect_attempts=-1,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
            **nats_options(self.config),
        )
        js = self._nc.jetstream()
        buckets = []
        for name in ("directory", "instances"):
            bucket = f"{self.prefix}_{name}"
            try:
                buckets.append(await js.key_value(bucket))
            except BucketNotFoundError:
                buckets.append(await js.create_key_value(bucket=bucket, history=1))
        self._directory, self._instances = buckets
        await self._nc.subscribe(f"{self.prefix}.inbox.{self._me}", cb=self._received)
        await self._nc.subscribe(f"{self.prefix}.broadcast", cb=self._broadcast_received)
        for address in self._work:
            await self._subscribe_work(address)
        await self._instances.put(self._me, str(int(time.time() * 1000)).encode())
        self._connected = True

    async def _close(self) -> None:
        if self._nc is None:
            return
        with contextlib.suppress(Exception):
            if self._instances is not None:
                await self._instances.delete(self._me)
            for address, revision in list(self._ours.items()):
                await self._directory.delete(_key(address), last=revision)
        with contextlib.suppress(Exception):
            await self._nc.close()

    async def _subscribe_work(self, address: Address) -> None:
        await self._nc.subscribe(
            self._work_subject(address), queue=f"{self.prefix}-workers", cb=self._received
        )

    async def _broadcast_received(self, msg: Any) -> None:
        if (msg.headers or {}).get(_ORIGIN) != self._me:  # our own was delivered here already
            await self._received(msg)

    async def _received(self, msg: Any) -> None:
        assert self._inbound is not None
        self._inbound.put(msg.data)

    async def _create(self, key: str) -> int | None:
        from nats.js.errors import KeyWrongLastSequenceError

        try:
            revision: int = await self._directory.create(key, self._me.encode())
        except KeyWrongLastSequenceError:
            return None
        return revision

    async def _get(self, key: str) -> tuple[str, int] | None:
        from nats.js.errors import KeyDeletedError, KeyNotFoundError

        try:
            entry = await self._directory.get(key)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        return entry.value.decode(), entry.revision

    async def _delete(self, key: str, revision: int) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        with contextlib.suppress(KeyWrongLastSequenceError):
            await self._directory.delete(key, last=revision)

    async def _publish_batch(self, batch: list[tuple[str, bytes]]) -> None:
        origin = {_ORIGIN: self._me}
        broadcast = f"{self.prefix}.broadcast"
        for subject, data in batch:
            await self._nc.publish(subject, data, headers=origin if subject == broadcast else None)

    async def _watch(self, entries: Handoff[tuple[str, Any]]) -> None:
        """Follow both buckets (every entry, then ``None`` once each is caught up) into
        ``entries`` until cancelled."""
        import asyncio

        directory = await self._directory.watchall()
        instances = await self._instances.watchall()
        try:

            async def follow(kind: str, watcher: Any) -> None:
                async for entry in watcher:
                    entries.put((kind, entry))

            await asyncio.gather(follow("directory", directory), follow("instances", instances))
        finally:
            with contextlib.suppress(Exception):
                await directory.stop()
            with contextlib.suppress(Exception):
                await instances.stop()

    # trio side

    async def _aio(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """One hop to the loop thread and back (batch what you can)."""
        return await self._bridge.run(fn, *args)

    def _push(self, data: bytes) -> None:
        try:
            self._in_send.send_nowait(data)
        except trio.WouldBlock:
            self.stats["dropped"] += 1

    def _disconnected(self) -> None:
        self._connected = False
        self._lost_at = time.monotonic()
        log.warning("bus: disconnected from %s", self.config.url)

    def _reconnected(self) -> None:
        self._connected = True
        self._lost_at = None
        log.info("bus: reconnected to %s", self.config.url)
        self._resync.set()  # watchers restart, the directory cache is rebuilt

    def _mirror(self) -> Handoff[tuple[str, Any]]:
        """Where one round of watching delivers: the directory fills a fresh map until both
        buckets are caught up, which then replaces the cache; later entries apply to the cache.
        Entries of an earlier round that arrive late are ignored."""
        assert self._token is not None
        self._round += 1
        this_round = self._round
        holders: dict[Address, tuple[str, int]] = {}
        initial = 2

        def apply(item: tuple[str, Any]) -> None:
            nonlocal initial
            if self._round != this_round:
                return
            kind, entry = item
            if entry is None:
                initial -= 1
                if initial == 0:
                    self._holders = holders
                    self._synced = True
                    self._first_sync.set()
                return
            deleted = entry.operation in ("DEL", "PURGE")
            if kind == "instances":
                if deleted:
                    self._seen.pop(entry.key, None)
                else:
                    self._seen[entry.key] = (time.monotonic(), entry.revision)
                return
            address = _address(entry.key)
            if address is None:
                return
            target = holders if initial else self._holders
            if deleted:
                target.pop(address, None)
            else:
                target[address] = (entry.value.decode(), entry.revision)

        return Handoff(self._token, apply)

    async def _watch_loop(self) -> None:
        """Keep the caches mirrored; start over after every reconnect (CLUSTER.md, pitfall 2)."""
        while True:
            self._resync = trio.Event()
            entries = self._mirror()

            async with trio.open_nursery() as nursery:

                async def watch(entries: Handoff[tuple[str, Any]]) -> None:
                    try:
                        await self._aio(self._watch, entries)
                    except Exception as exc:  # a watcher broken by a disconnect: start over
                        log.info("bus: directory watch ended (%s); resyncing", exc)
                        self._resync.set()

                nursery.start_soon(watch, entries)
                await self._resync.wait()
                nursery.cancel_scope.cancel()
            self._synced = False
            await trio.sleep(self.config.reconnect_wait_s / 2)

    async def _pump(self) -> None:
        while True:
            batch = [await self._out_recv.receive()]
            while len(batch) < _BATCH:
                try:
                    batch.append(self._out_recv.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                await self._aio(self._publish_batch, batch)
                self.stats["published"] += len(batch)
            except Exception as exc:
                self.stats["dropped"] += len(batch)
                log.debug("bus: a batch of %d was not published: %s", len(batch), exc)

    async def _deliver(self, nursery: trio.Nursery) -> None:
        router = self._router
        assert router is not None
        starting = trio.CapacityLimiter(64)
        async for data in self._in_recv:
            self.stats["received"] += 1
            try:
                envelope = self.codec.decode(data)
            except msgspec.DecodeError:
                self.stats["undecodable"] += 1
                continue
            if envelope.is_reply or router.is_local(envelope.dst):
                await self._deliver_one(envelope)
            else:  # may start a virtual actor: never make the others wait for that
                nursery.start_soon(self._deliver_started, envelope, starting)

    async def _deliver_started(self, envelope: Envelope, starting: trio.CapacityLimiter) -> None:
        async with starting:
            await self._deliver_one(envelope)

    async def _deliver_one(self, envelope: Envelope) -> None:
        assert self._router is not None
        try:
            await self._router.deliver_local(envelope, wait=False)
        except (Unreachable, Overloaded):
            self.stats["dropped"] += 1

    async def _heartbeat(self) -> None:
        while True:
            await trio.sleep(self.config.heartbeat_s)
            if not self._connected:
                continue
            with contextlib.suppress(Exception):
                stamp = str(int(time.time() * 1000)).encode()
                await self._aio(self._instances.put, self._me, stamp)

    async def _police(self) -> None:
        """Dead instances' directory entries go; and if this one lost NATS for too long, the
        others have declared it dead: it fences itself."""
        while True:
            await trio.sleep(min(1.0, self.config.instance_timeout_s / 3))
            lost = self._lost_at
            if lost is not None and time.monotonic() - lost > self.config.instance_timeout_s:
                if not self.fenced:
                    self.fenced = True
                    log.warning("bus: lost for too long; this instance fences itself")
                    assert self._router is not None
                    self._router.fence()
                continue
            if self.fenced and self._connected and self._synced:
                log.info("bus: back; this instance takes new work again")
                self.fenced = False
            if not self._connected:
                continue
            for address, (holder, revision) in list(self._holders.items()):
                if holder != self._me and not self.alive(holder):
                    with contextlib.suppress(Exception):
                        await self._aio(self._delete, _key(address), revision)
            for instance, (_, revision) in list(self._seen.items()):
                if instance != self._me and not self.alive(instance):
                    with contextlib.suppress(Exception):
                        await self._aio(self._forget, instance, revision)

    async def _forget(self, instance: str, revision: int) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        with contextlib.suppress(KeyWrongLastSequenceError):
            await self._instances.delete(instance, last=revision)


def cluster_bus(config: BusConfig, codec: Codec, bridge: AsyncioThread) -> Bus:
    """The router's bus: NATS with ``bus.url`` (on ``bridge``'s loop), otherwise the in-process
    one of a single instance."""
    return NatsBus(config, codec, bridge) if config.url else InProcessHub().bus()


def bus_child(bus: Bus) -> ChildSpec:
    """The ``bus`` child: the router's link to the other instances, up while it runs."""
    return ChildSpec("bus", bus.serve, shutdown_s=1.0)
