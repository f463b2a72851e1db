"""The ddns service of one instance: it records each device's current public address in the
registry, and keeps the operator's zone in step with the devices that have a DNS name.

Network actors tell it of an address change (:meth:`Ddns.address_changed`, which never blocks:
the change waits in a table, the latest per device). Its worker writes the registry, then sends
the zone's server one RFC 2136 update per changed name. A failed update is logged, counted and
retried after 1 s, doubling up to ``ddns.retry_max_s``; meanwhile the device's session and
everything else go on (the relay stays the path, as it is for devices without DDNS).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .._config import DdnsConfig
from .._crypto import Vault
from .._errors import NotFound, StoreUnavailable, UniqueViolation
from ..store import Database, Scope, Tx
from ._dns import UpdateFailed, Updater
from ._names import (
    DdnsName,
    NameTaken,
    check_label,
    current_addresses,
    current_label,
    get_name,
    orphaned_names,
    publishable,
    record_address,
    remove_name,
    set_name,
)

log = logging.getLogger(__name__)

MAX_PENDING = 100_000
"""Address changes waiting to be recorded at once; beyond it new ones are dropped (counted):
the device's next change or session brings its address again."""
_STORE_RETRY_S = 1.0


@dataclass
class DdnsStats:
    address_changes: int = 0
    """Address changes recorded in the registry."""
    dropped: int = 0
    """Address changes dropped because too many waited."""
    updates_ok: int = 0
    updates_failed: int = 0


class Ddns:
    """The registry of current addresses and, when ``config.zone`` is set, the zone's names.

    ``db()`` is the open database (raising ``StoreUnavailable`` while there is none).
    Construction checks the ``[ddns]`` section (:class:`ConfigError`)."""

    def __init__(self, config: DdnsConfig, db: Callable[[], Database]) -> None:
        self.config = config
        self.updater = Updater(config) if config.zone else None
        self._db = db
        self._addresses: dict[tuple[str, str], tuple[str, list[str]]] = {}
        """Changes to record: (network, device) -> (seen, reported), the latest only."""
        self._wanted: dict[str, list[str]] = {}
        """Updates to send: label -> the addresses it should have (empty: none)."""
        self._retry: dict[str, tuple[int, float]] = {}
        """Labels whose last update failed: (failures in a row, not before this trio time)."""
        self._wake = trio.Event()
        self.stats = DdnsStats()

    # ----------------------------------------------------------------- from the relay

    def address_changed(
        self, network_id: str, device_id: str, seen: str, reported: list[str]
    ) -> None:
        """A device's session came from ``seen``, or the device reported ``reported`` (checked
        by :func:`check_addresses`): record it, and update its name if it has one. Never blocks."""
        if not seen and not reported:
            return  # nothing known (a session over WebRTC): the last address stays
        key = (network_id, device_id)
        if key not in self._addresses and len(self._addresses) >= MAX_PENDING:
            self.stats.dropped += 1
            return
        self._addresses[key] = (seen, list(reported))
        self._wake.set()

    # ----------------------------------------------------------------- for the API

    def _zone(self) -> Updater:
        if self.updater is None:
            raise NotFound("this server offers no DDNS (no [ddns] zone is configured)")
        return self.updater

    def full_name(self, label: str) -> str:
        return self._zone().name(label)

    async def set_name(self, scope: Scope, network_id: str, device_id: str, label: str) -> DdnsName:
        """Give the caller's device ``label`` under the zone; its current address is published
        at once (in the background), and a name it had before is removed."""
        self._zone()
        label = check_label(label, self.config.reserved_labels)

        db = self._db()

        async def work(tx: Tx) -> tuple[DdnsName, str | None]:
            return await set_name(tx, db.vault, scope, network_id, device_id, label)

        try:
            name, replaced = await db.write(work)
        except UniqueViolation as exc:  # a concurrent request took it between look and insert
            if isinstance(exc, NameTaken):
                raise
            raise NameTaken("that name is taken") from None
        if replaced is not None:
            self._remove(replaced)
        self._want(name.label, name.addresses)
        return name

    async def get_name(self, scope: Scope, network_id: str, device_id: str) -> DdnsName:
        self._zone()

        db = self._db()

        async def work(tx: Tx) -> DdnsName:
            return await get_name(tx, db.vault, scope, network_id, device_id)

        return await db.read(work)

    async def remove_name(self, scope: Scope, network_id: str, device_id: str) -> None:
        """Take the device's name away; its records leave the zone (in the background)."""
        self._zone()

        async def work(tx: Tx) -> str:
            return await remove_name(tx, scope, network_id, device_id)

        self._remove(await self._db().write(work))

    def _want(self, label: str, addresses: list[str]) -> None:
        """Point ``label`` at ``addresses``; with nothing to publish (a session over WebRTC,
        only private addresses) the zone keeps the last address it had."""
        published = publishable(addresses, private=self.config.publish_private)
        if published and self.updater is not None:
            self._wanted[label] = published
            self._wake.set()

    def _remove(self, label: str) -> None:
        """Take ``label``'s records out of the zone."""
        if self.updater is not None:
            self._wanted[label] = []
            self._wake.set()

    # ----------------------------------------------------------------- the worker

    def statistics(self) -> dict[str, int]:
        return {**vars(self.stats), "pending": len(self._wanted) + len(self._addresses)}

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Record addresses and send updates until cancelled (what waits stays for the next
        run of the worker: it lives on this object)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sweep)
            task_status.started()
            await self._work()

    async def _sweep(self) -> None:
        """Names of devices that were deleted leave the zone (every ``ddns.sweep_s``)."""
        while True:
            await trio.sleep(self.config.sweep_s)
            try:
                gone = await self._db().write(orphaned_names)
            except StoreUnavailable:
                continue
            except Exception:  # the next sweep tries again
                log.warning("ddns sweep failed", exc_info=True)
                continue
            for label in gone:
                log.info("ddns name %s removed: its device is gone", label)
                self._remove(label)

    async def _work(self) -> None:
        while True:
            if not self._addresses and not self._due():
                with trio.move_on_at(self._next_retry()):
                    await self._wake.wait()
                self._wake = trio.Event()
            if not await self._record():
                await trio.sleep(_STORE_RETRY_S)
            await self._send_due()

    def _due(self) -> list[str]:
        now = trio.current_time()
        return [label for label in self._wanted if self._retry.get(label, (0, -math.inf))[1] <= now]

    def _next_retry(self) -> float:
        times = [self._retry[label][1] for label in self._wanted if label in self._retry]
        return min(times, default=math.inf)

    async def _record(self) -> bool:
        """Write the waiting address changes, one transaction each (a device deleted meanwhile
        fails alone); ``False`` if the store is not there (what is left waits)."""
        while self._addresses:
            key = next(iter(self._addresses))
            seen, reported = self._addresses.pop(key)
            network_id, device_id = key

            try:
                db = self._db()
                label = await db.write(
                    functools.partial(
                        _record_one, vault=db.vault, key=key, seen=seen, reported=reported
                    )
                )
            except StoreUnavailable:
                self._addresses.setdefault(key, (seen, reported))
                return False
            except Exception as exc:  # the device is gone, or a bad row: drop this change only
                log.info(
                    "network=%s device=%s address not recorded: %s",
                    network_id,
                    device_id,
                    type(exc).__name__,
                )
                continue
            self.stats.address_changes += 1
            if label is not None:
                self._want(label, current_addresses(seen, reported))
        return True

    async def _send_due(self) -> None:
        updater = self.updater
        if updater is None:
            return
        for label in self._due():
            addresses = self._wanted.pop(label)
            try:
                await updater.replace(label, addresses)
            except UpdateFailed as exc:
                self.stats.updates_failed += 1
                failures = self._retry.get(label, (0, 0.0))[0] + 1
                delay = min(2.0 ** (failures - 1), self.config.retry_max_s)
                self._retry[label] = (failures, trio.current_time() + delay)
                self._wanted.setdefault(label, addresses)  # unless a newer change came meanwhile
                log.warning(
                    "ddns update of %s failed (%s); retry %d in %.0f s",
                    updater.name(label),
                    exc,
                    failures,
                    delay,
                    extra={"ddns_name": updater.name(label), "failures": failures},
                )
                continue
            self.stats.updates_ok += 1
            self._retry.pop(label, None)
            log.info(
                "ddns name %s updated (%d addresses)",
                updater.name(label),
                len(addresses),
                extra={"ddns_name": updater.name(label)},
            )


async def _record_one(
    tx: Tx, *, vault: Vault, key: tuple[str, str], seen: str, reported: list[str]
) -> str | None:
    """Record one device's address; its label, if it has a DNS name."""
    await record_address(tx, vault, *key, seen, reported)
    return await current_label(tx, *key)


class DdnsCollector(Collector):
    """The ddns service's counters for ``/metrics`` (read at scrape time)."""

    def __init__(self, ddns: Ddns) -> None:
        self._ddns = ddns

    def collect(self) -> Iterator[Metric]:
        stats = self._ddns.statistics()
        updates = CounterMetricFamily(
            "yggdrasil_ddns_updates",
            "DNS updates sent to the zone's server, by result",
            labels=["result"],
        )
        updates.add_metric(["ok"], stats["updates_ok"])
        updates.add_metric(["failed"], stats["updates_failed"])
        yield updates
        yield CounterMetricFamily(
            "yggdrasil_ddns_address_changes",
            "Device address changes recorded in the registry",
            value=stats["address_changes"],
        )
        yield CounterMetricFamily(
            "yggdrasil_ddns_address_changes_dropped",
            "Device address changes dropped because too many waited",
            value=stats["dropped"],
        )
        yield GaugeMetricFamily(
            "yggdrasil_ddns_pending",
            "Address changes and DNS updates waiting (updates being retried included)",
            value=stats["pending"],
        )
