"""The NATS bus, with real NATS: routers of several instances in this process, each with its own
connection, under a prefix of the test's own."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import msgspec
import pytest
import trio

from actors import (
    Actor,
    Address,
    AddressInUse,
    Codec,
    Envelope,
    Mailbox,
    Placement,
    Router,
    Supervisor,
    Unreachable,
)
from tests.cluster import require_nats, unique_prefix
from yggdrasil import AsyncioThread
from yggdrasil._cluster import NatsBus
from yggdrasil._config import BusConfig


class Ping(msgspec.Struct, frozen=True, tag="test.ping"):
    n: int


class Pong(msgspec.Struct, frozen=True, tag="test.pong"):
    n: int
    by: str


CODEC = Codec(Ping, Pong)
DEVICE = Address.of("device", "net", "phone")
NETWORK = Address.of("network", "net")


def same_tenant(src: Address, dst: Address) -> bool:
    if "service" in (src.kind, dst.kind):
        return True
    return src.segments[0] == dst.segments[0]


class Answerer(Actor):
    idle_timeout_s = 30.0

    def __init__(self, address: Address, instance: str) -> None:
        super().__init__(address)
        self.instance = instance

    async def handle(self, envelope: Envelope) -> None:
        if isinstance(envelope.body, Ping):
            await self.reply(envelope, Pong(envelope.body.n, self.instance))


def answerer(instance: str) -> Callable[[Address], Actor]:
    return lambda address: Answerer(address, instance)


@asynccontextmanager
async def cluster(
    names: list[str], bridge: AsyncioThread, **config: float
) -> AsyncIterator[tuple[list[Router], trio.Nursery]]:
    settings = BusConfig(url=require_nats(), prefix=unique_prefix(), **config)  # type: ignore[arg-type]
    routers = []
    async with trio.open_nursery() as nursery:
        for name in names:
            router = Router(name, NatsBus(settings, CODEC, bridge), rule=same_tenant)
            supervisor = Supervisor(f"networks-{name}")
            router.define("network", factory=answerer(name), supervisor=supervisor)
            router.define("service", placement=Placement.INSTANCE)
            await nursery.start(supervisor.run)
            await nursery.start(router.bus.serve)
            routers.append(router)
        yield routers, nursery
        nursery.cancel_scope.cancel()


async def eventually(check: object, timeout_s: float = 5.0) -> None:
    with trio.fail_after(timeout_s):
        while not check():  # type: ignore[operator]  # noqa: ASYNC110 - a condition, no event
            await trio.sleep(0.02)


async def test_one_holder_per_address_and_forwarding_across_instances(
    bridge: AsyncioThread,
) -> None:
    async with cluster(["a", "b"], bridge) as ((a, b), nursery):
        await nursery.start(Answerer(DEVICE, "a").run, a)
        with pytest.raises(AddressInUse):
            await b.register(DEVICE, Mailbox(4))
        await eventually(lambda: b.bus.holder(DEVICE) == "a")
        caller = Address.of("device", "net", "laptop")
        assert await b.request(caller, DEVICE, Ping(7), timeout_s=2) == Pong(7, "a")
        # The rule holds for envelopes from the bus too: another tenant is unreachable.
        with pytest.raises(Unreachable):
            await b.send(Envelope(Address.of("device", "other", "x"), DEVICE, Ping(1)))


async def test_a_virtual_actor_starts_once_in_the_cluster(bridge: AsyncioThread) -> None:
    async with cluster(["a", "b", "c"], bridge) as (routers, _):
        answers = []
        for router in routers * 2:
            sender = Address.of("device", "net", router.instance_id)
            answers.append(await router.request(sender, NETWORK, Ping(1), timeout_s=3))
        assert len({answer.by for answer in answers}) == 1
        assert sum(r.statistics().activated for r in routers) == 1


async def test_broadcast_reaches_every_instance(bridge: AsyncioThread) -> None:
    async with cluster(["a", "b", "c"], bridge) as (routers, _):
        service = Address.of("service", "revocations")
        boxes = [Mailbox[Envelope](8) for _ in routers]
        for router, box in zip(routers, boxes, strict=True):
            await router.register(service, box)
        await routers[0].broadcast(Envelope(service, service, Ping(3)))
        with trio.fail_after(3):
            for box in boxes:
                assert (await box.get()).body == Ping(3)


async def test_a_dead_instances_addresses_are_given_up(bridge: AsyncioThread) -> None:
    config = {"heartbeat_s": 0.2, "instance_timeout_s": 1.0}
    async with cluster(["a"], bridge, **config) as ((a,), _):
        settings = BusConfig(
            url=require_nats(),
            prefix=a.bus.prefix,  # type: ignore[attr-defined]
            heartbeat_s=0.2,
            instance_timeout_s=1.0,
        )
        async with AsyncExitStack() as stack:
            doomed = Router("doomed", NatsBus(settings, CODEC, bridge), rule=same_tenant)
            scope = trio.CancelScope()

            async def run_doomed(*, task_status: trio.TaskStatus[None]) -> None:
                with scope:
                    async with trio.open_nursery() as inner:
                        await inner.start(doomed.bus.serve)
                        await doomed.register(DEVICE, Mailbox(4))
                        task_status.started()
                        await trio.sleep_forever()

            nursery = await stack.enter_async_context(trio.open_nursery())
            await nursery.start(run_doomed)
            await eventually(lambda: a.bus.holder(DEVICE) == "doomed")
            assert a.bus.alive("doomed")
            # The instance dies without a goodbye: its heartbeat stops, its entries stay.
            bus = doomed.bus
            assert isinstance(bus, NatsBus)
            bus._close = _silently  # type: ignore[method-assign]
            scope.cancel()
            await eventually(lambda: not a.bus.alive("doomed"), timeout_s=5)
            await eventually(lambda: a.bus.holder(DEVICE) is None, timeout_s=5)
            await a.register(DEVICE, Mailbox(4))  # free for another instance now


async def _silently() -> None:
    """A crash closes nothing: the connection just goes."""


async def test_dispatched_work_reaches_exactly_one_instance(bridge: AsyncioThread) -> None:
    async with cluster(["a", "b", "c"], bridge) as (routers, _):
        renewals = Address.of("service", "renewals")
        boxes = [Mailbox[Envelope](1000) for _ in routers]
        for router, box in zip(routers, boxes, strict=True):
            await router.serve_work(renewals, box)
        jobs = 300
        for n in range(jobs):
            await routers[n % 3].dispatch(Envelope(renewals, renewals, Ping(n)))
        taken: list[list[int]] = [[], [], []]
        with trio.fail_after(5):
            while sum(map(len, taken)) < jobs:
                for index, box in enumerate(boxes):
                    with contextlib.suppress(trio.WouldBlock):
                        envelope = box.get_nowait()
                        assert isinstance(envelope.body, Ping)
                        taken[index].append(envelope.body.n)
                await trio.sleep(0.01)
        await trio.sleep(0.2)
        assert sorted(n for share in taken for n in share) == list(range(jobs))  # once each
        assert all(not box.statistics().size for box in boxes)
        assert sum(1 for share in taken if share) >= 2  # shared, not all on one instance
