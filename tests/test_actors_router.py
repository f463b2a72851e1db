"""The router and the actor template: delivery, request/reply, the application's rule on every
envelope, virtual actors, idle stop, one holder per address, the lifecycle hooks, and the bus
between instances (envelopes encoded on the way, as on the wire)."""

from __future__ import annotations

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from actors import (
    Actor,
    Address,
    AddressInUse,
    Codec,
    Envelope,
    InProcessHub,
    Mailbox,
    Overflow,
    Overloaded,
    Placement,
    RequestTimeout,
    Router,
    Supervisor,
    Unreachable,
    Urgent,
)

# ----------------------------------------------------------------------------- a small domain


def tenant(address: Address) -> str | None:
    """The test's tenants: ``device/<net>/<id>`` and ``network/<net>`` belong to ``net``."""
    if address.kind in ("device", "network"):
        return address.segments[0]
    return None


def same_tenant(src: Address, dst: Address) -> bool:
    if "service" in (src.kind, dst.kind):
        return True
    return tenant(src) is not None and tenant(src) == tenant(dst)


def device(net: str, name: str) -> Address:
    return Address.of("device", net, name)


class Text(msgspec.Struct, frozen=True, tag="test.text"):
    text: str


class Echoed(msgspec.Struct, frozen=True, tag="test.echoed"):
    text: str
    by: str


CODEC = Codec(Text, Echoed)


class Echo(Actor):
    """Replies to requests with what it got and who it is; records everything."""

    def __init__(self, address: Address, instance: str = "") -> None:
        super().__init__(address)
        self.instance = instance
        self.received: list[Envelope] = []

    async def handle(self, envelope: Envelope) -> None:
        self.received.append(envelope)
        assert isinstance(envelope.body, Text)
        await self.reply(envelope, Echoed(envelope.body.text, self.instance))


A1 = device("net-a", "one")
A2 = device("net-a", "two")
B1 = device("net-b", "one")


def router(instance: str = "i1", hub: InProcessHub | None = None) -> Router:
    return Router(instance, None if hub is None else hub.bus(), rule=same_tenant)


# ----------------------------------------------------------------------------- delivery


async def test_send_and_request_within_a_network() -> None:
    r = router()
    echo = Echo(A2)
    async with trio.open_nursery() as nursery:
        assert await nursery.start(echo.run, r) == A2  # ready reports the address, not the actor
        await r.send(Envelope(A1, A2, Text("hello")))
        assert await r.request(A1, A2, Text("42"), timeout_s=1) == Echoed("42", "")
        assert [e.body for e in echo.received] == [Text("hello"), Text("42")]
        assert echo.received[0].src == A1  # the router keeps what the caller stamped
        nursery.cancel_scope.cancel()
    assert not r.is_local(A2)  # unregistered when the actor ended


async def test_foreign_and_nonexistent_are_the_same_unreachable() -> None:
    r = router()
    async with trio.open_nursery() as nursery:
        await nursery.start(Echo(B1).run, r)
        answers = []
        for dst in (B1, device("net-b", "ghost"), device("net-c", "one")):
            with pytest.raises(Unreachable) as info:
                await r.send(Envelope(A1, dst, Text("probe")))
            answers.append((type(info.value), str(info.value), info.value.args))
            with pytest.raises(Unreachable):
                await r.request(A1, dst, Text("probe"), timeout_s=1)
        assert len(set(answers)) == 1
        nursery.cancel_scope.cancel()


async def test_request_times_out_and_late_replies_are_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    r = router()
    box: Mailbox[Envelope] = Mailbox(4)
    await r.register(A2, box)
    with pytest.raises(RequestTimeout):
        await r.request(A1, A2, Text("slow"), timeout_s=2)
    request = box.get_nowait()
    await r.reply(request, Echoed("too late", ""))
    assert r.statistics().late_replies == 1
    assert r.statistics().pending_requests == 0


async def test_expired_requests_never_reach_the_handler(
    autojump_clock: trio.testing.MockClock,
) -> None:
    r = router()
    echo = Echo(A2)
    envelope = Envelope(A1, A2, Text("old"), corr="i1:999", deadline=0.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(echo.run, r)
        await r.send(envelope)
        await trio.sleep(1)
        assert echo.received == []
        assert echo.expired == 1
        nursery.cancel_scope.cancel()


async def test_overloaded_mailbox_rejects() -> None:
    r = router()
    await r.register(A2, Mailbox(1, Overflow.REJECT))
    await r.send(Envelope(A1, A2, Text("1")))
    with pytest.raises(Overloaded):
        await r.send(Envelope(A1, A2, Text("2")))


async def test_services_are_reachable_from_every_tenant_and_can_answer() -> None:
    r = router()
    service = Address.of("service", "locks")
    async with trio.open_nursery() as nursery:
        await nursery.start(Echo(service).run, r)
        assert await r.request(A1, service, Text("a"), timeout_s=1) == Echoed("a", "")
        assert await r.request(B1, service, Text("b"), timeout_s=1) == Echoed("b", "")
        nursery.cancel_scope.cancel()


# ----------------------------------------------------------------------------- one holder


async def test_an_address_is_held_once_on_an_instance() -> None:
    r = router()
    await r.register(A1, Mailbox(1))
    with pytest.raises(AddressInUse):
        await r.register(A1, Mailbox(1))
    async with trio.open_nursery() as nursery:
        with pytest.raises(AddressInUse):
            await nursery.start(Echo(A1).run, r)


async def test_a_second_holder_in_the_cluster_is_refused_never_overwritten() -> None:
    hub = InProcessHub(CODEC)
    left, right = router("left", hub), router("right", hub)
    async with trio.open_nursery() as nursery:
        await nursery.start(left.bus.serve)
        await nursery.start(right.bus.serve)
        first = Echo(A2, "left")
        async with trio.open_nursery() as holding:
            await holding.start(first.run, left)
            with pytest.raises(AddressInUse):
                await right.register(A2, Mailbox(1))
            assert await right.request(A1, A2, Text("who"), timeout_s=1) == Echoed("who", "left")
            assert not right.is_local(A2)
            first.stop()
        # Once the holder has given the address up, the other instance may take it.
        assert not left.is_local(A2)
        await nursery.start(Echo(A2, "right").run, right)
        assert await left.request(A1, A2, Text("now"), timeout_s=1) == Echoed("now", "right")
        nursery.cancel_scope.cancel()


async def test_the_bus_forwards_between_instances_with_the_same_rule() -> None:
    hub = InProcessHub(CODEC)
    left, right = router("left", hub), router("right", hub)
    async with trio.open_nursery() as nursery:
        await nursery.start(left.bus.serve)
        await nursery.start(right.bus.serve)
        echo = Echo(A2, "right")
        await nursery.start(echo.run, right)
        await nursery.start(Echo(B1, "right").run, right)
        # A1 talks from the left instance to A2 on the right one: request and reply cross the
        # bus, encoded and decoded as they would be on the wire.
        assert await left.request(A1, A2, Text("x"), timeout_s=1) == Echoed("x", "right")
        assert echo.received[0].src == A1
        assert left.statistics().forwarded == 1
        with pytest.raises(Unreachable):
            await left.send(Envelope(A1, B1, Text("cross-tenant")))
        with pytest.raises(Unreachable):
            await left.send(Envelope(A1, device("net-a", "nowhere"), Text("missing")))
        nursery.cancel_scope.cancel()


# ----------------------------------------------------------------------------- virtual actors


class Counter(Actor):
    """A virtual actor that counts what it got, says when it started and stopped."""

    idle_timeout_s = 10.0
    log: list[str] = []

    def __init__(self, address: Address, instance: str) -> None:
        super().__init__(address)
        self.instance = instance
        self.count = 0

    async def on_start(self) -> None:
        Counter.log.append(f"start {self.address} on {self.instance}")

    async def on_stop(self) -> None:
        Counter.log.append(f"stop {self.address} on {self.instance} after {self.count}")

    async def handle(self, envelope: Envelope) -> None:
        self.count += 1
        await self.reply(envelope, Echoed(str(self.count), self.instance))


def counting(r: Router, supervisor: Supervisor) -> None:
    r.define(
        "network",
        factory=lambda address: Counter(address, r.instance_id),
        supervisor=supervisor,
    )


async def test_the_first_envelope_starts_a_virtual_actor_and_idleness_stops_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    Counter.log = []
    r = router()
    supervisor = Supervisor("networks")
    counting(r, supervisor)
    net = Address.of("network", "net-a")
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        assert not r.is_local(net)
        answers = [await r.request(A1, net, Text("hi"), timeout_s=1) for _ in range(3)]
        assert [a.text for a in answers] == ["1", "2", "3"]  # one actor, started once
        assert Counter.log == ["start network/net-a on i1"]
        await trio.sleep(11)  # idle: it stops itself, and the address is free again
        assert not r.is_local(net)
        assert Counter.log[-1] == "stop network/net-a on i1 after 3"
        again = await r.request(A1, net, Text("hi"), timeout_s=1)
        assert again.text == "1"  # a fresh incarnation
        assert r.statistics().activated == 2
        with pytest.raises(Unreachable):  # the rule holds for virtual actors too
            await r.send(Envelope(B1, net, Text("intruder")))
        nursery.cancel_scope.cancel()


async def test_concurrent_first_envelopes_start_one_actor() -> None:
    Counter.log = []
    r = router()
    supervisor = Supervisor("networks")
    counting(r, supervisor)
    net = Address.of("network", "net-a")
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        async with trio.open_nursery() as senders:
            for _ in range(20):
                senders.start_soon(r.send, Envelope(A1, net, Text("x")))
        assert Counter.log == ["start network/net-a on i1"]
        assert r.statistics().delivered == 20
        nursery.cancel_scope.cancel()


async def test_a_virtual_actor_lives_on_one_instance_of_the_cluster() -> None:
    Counter.log = []
    hub = InProcessHub(CODEC)
    routers = [router(f"i{n}", hub) for n in range(3)]
    supervisors = [Supervisor(f"networks-{n}") for n in range(3)]
    for r, supervisor in zip(routers, supervisors, strict=True):
        counting(r, supervisor)
    net = Address.of("network", "net-a")
    async with trio.open_nursery() as nursery:
        for r, supervisor in zip(routers, supervisors, strict=True):
            await nursery.start(r.bus.serve)
            await nursery.start(supervisor.run)
        answers = []
        for r in routers * 2:
            answers.append(
                await r.request(device("net-a", r.instance_id), net, Text("x"), timeout_s=1)
            )
        assert {a.by for a in answers} == {"i0"}  # the first one to be asked holds it
        assert [a.text for a in answers] == [str(n) for n in range(1, 7)]
        assert Counter.log == ["start network/net-a on i0"]
        nursery.cancel_scope.cancel()


async def test_a_factory_may_refuse_an_address() -> None:
    r = router()
    supervisor = Supervisor("networks")
    r.define("network", factory=lambda address: None, supervisor=supervisor)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        with pytest.raises(Unreachable):
            await r.send(Envelope(A1, Address.of("network", "net-a"), Text("x")))
        nursery.cancel_scope.cancel()


# ----------------------------------------------------------------------------- lifecycle


class Hooked(Actor):
    def __init__(self, address: Address, events: list[str], *, fail: str = "") -> None:
        super().__init__(address)
        self.events = events
        self.fail = fail

    async def on_start(self) -> None:
        self.events.append(f"start registered={self.router.is_local(self.address)}")
        self.nursery.start_soon(self._side)
        if self.fail == "start":
            raise RuntimeError("cannot start")

    async def _side(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self.events.append("side task cancelled")

    async def on_stop(self) -> None:
        self.events.append(f"stop registered={self.router.is_local(self.address)}")

    async def handle(self, envelope: Envelope) -> None:
        self.events.append(f"handle {envelope.body}")
        if self.fail == "handle":
            raise RuntimeError("boom")
        if isinstance(envelope.body, Text) and envelope.body.text == "stop":
            self.stop()


@pytest.mark.parametrize("ending", ["stop", "handle", "start", "cancel"])
async def test_the_lifecycle_hooks_run_in_order_whatever_ends_the_actor(ending: str) -> None:
    events: list[str] = []
    r = router()
    actor = Hooked(A1, events, fail=ending if ending in ("handle", "start") else "")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(actor.run, r)
            if ending == "cancel":
                nursery.cancel_scope.cancel()
            else:
                await r.send(Envelope(A2, A1, Text("stop")))
    except* RuntimeError:
        assert ending in ("handle", "start")
    assert events[0] == "start registered=True"
    assert events[-2:] == ["side task cancelled", "stop registered=False"]
    assert not r.is_local(A1)


# ----------------------------------------------------------------------------- broadcast


async def test_broadcast_reaches_the_local_service_of_every_instance() -> None:
    hub = InProcessHub(CODEC)
    routers = [router(f"i{n}", hub) for n in range(3)]
    service = Address.of("service", "revocations")
    for r in routers:
        r.define("service", placement=Placement.INSTANCE)
    boxes = [Mailbox[Envelope](4) for _ in routers]
    async with trio.open_nursery() as nursery:
        for r, box in zip(routers, boxes, strict=True):
            await nursery.start(r.bus.serve)
            await r.register(service, box)  # each instance its own: no claim on the bus
        await routers[1].broadcast(Envelope(service, service, Text("revoke u1")))
        assert [box.get_nowait().body for box in boxes] == [Text("revoke u1")] * 3
        nursery.cancel_scope.cancel()


# ----------------------------------------------------------------------------- codec


def test_the_codec_carries_exactly_its_types() -> None:
    envelope = Envelope(A1, A2, Text("x"), corr="i1:1", deadline=12.5)
    assert CODEC.decode(CODEC.encode(envelope)) == envelope

    class Stranger(msgspec.Struct, tag="test.stranger"):
        pass

    with pytest.raises(TypeError):
        CODEC.encode(Envelope(A1, A2, Stranger()))
    with pytest.raises(msgspec.DecodeError):
        CODEC.decode(Codec(Stranger).encode(Envelope(A1, A2, Stranger())))

    class Untagged(msgspec.Struct):
        pass

    with pytest.raises(ValueError, match="tagged"):
        Codec(Untagged)


def test_address_text_round_trip() -> None:
    for text in ("device/n1/d1", "network/n1", "provider/p1", "service/locks"):
        assert str(Address.parse(text)) == text
    for bad in ("device//d", "network/", "/x", "device/a//b"):
        with pytest.raises(ValueError, match="address"):
            Address.parse(bad)


# ----------------------------------------------------------------------------- the rule


segment = st.text(alphabet="abc", min_size=1, max_size=2)
addresses = st.one_of(
    st.builds(device, segment, segment),
    st.builds(lambda n: Address.of("network", n), segment),
    st.builds(lambda n: Address.of("provider", n), segment),
    st.builds(lambda n: Address.of("service", n), segment),
)


@given(
    senders=st.lists(addresses, min_size=1, max_size=6),
    targets=st.lists(addresses, min_size=1, max_size=6, unique=True),
)
def test_the_router_delivers_exactly_what_the_rule_allows(
    senders: list[Address], targets: list[Address]
) -> None:
    async def main() -> None:
        r = router("prop")
        boxes = {target: Mailbox[Envelope](64) for target in targets}
        for target, box in boxes.items():
            await r.register(target, box)
        for src in senders:
            for dst in targets:
                try:
                    await r.send(Envelope(src, dst, Text("m")))
                    delivered = True
                except Unreachable:
                    delivered = False
                assert delivered == same_tenant(src, dst)
        for dst, box in boxes.items():
            while True:
                try:
                    envelope = box.get_nowait()
                except trio.WouldBlock:
                    break
                assert envelope.dst == dst
                assert same_tenant(envelope.src, envelope.dst)

    trio.run(main)


class Stop(Urgent, frozen=True, tag="test.stop"):
    reason: str


class Busy(Actor):
    """Takes a while per envelope: a queue builds up behind it."""

    mailbox_capacity = 100

    def __init__(self, address: Address) -> None:
        super().__init__(address)
        self.handled = 0
        self.interrupted: list[str] = []

    async def handle(self, envelope: Envelope) -> None:
        await trio.sleep(1)
        self.handled += 1

    def interrupt(self, envelope: Envelope) -> None:
        assert isinstance(envelope.body, Stop)
        self.interrupted.append(envelope.body.reason)
        self.stop()


async def test_an_urgent_message_overtakes_the_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    r = router()
    busy = Busy(A1)
    async with trio.open_nursery() as nursery:
        await nursery.start(busy.run, r)
        for n in range(50):
            await r.send(Envelope(A2, A1, Text(str(n))))
        started = trio.current_time()
        await r.send(Envelope(A2, A1, Stop("replaced")))
    assert busy.interrupted == ["replaced"]
    assert busy.handled == 0  # it stopped within the first envelope, not after fifty
    assert trio.current_time() - started < 1
    assert not r.is_local(A1)


async def test_dispatched_work_goes_to_one_of_the_instances_serving_it() -> None:
    hub = InProcessHub(CODEC)
    routers = [router(f"i{n}", hub) for n in range(3)]
    work = Address.of("service", "renewals")
    boxes = [Mailbox[Envelope](100) for _ in routers]
    async with trio.open_nursery() as nursery:
        for r in routers:
            r.define("service", placement=Placement.INSTANCE)
            await nursery.start(r.bus.serve)
        for r, box in zip(routers[:2], boxes[:2], strict=True):  # the third serves none
            await r.serve_work(work, box)
        for n in range(10):
            await routers[2].dispatch(Envelope(work, work, Text(str(n))))
        sizes = [box.statistics().size for box in boxes]
        assert sum(sizes) == 10
        assert sizes[2] == 0
        assert sizes[0] > 0
        assert sizes[1] > 0
        nursery.cancel_scope.cancel()
    with pytest.raises(Unreachable):
        await router("lonely").dispatch(Envelope(work, work, Text("nobody")))
