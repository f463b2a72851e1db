"""The router: delivery, request/reply, and the tenant boundary on every envelope."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from actors import (
    Actor,
    Address,
    AddressInUse,
    Envelope,
    InProcessHub,
    Mailbox,
    Overflow,
    Overloaded,
    RequestTimeout,
    Router,
    Unreachable,
    may_deliver,
)


class Echo(Actor):
    """Replies to requests with ("echo", body); records plain sends."""

    def __init__(self, address: Address, router: Router) -> None:
        super().__init__(address, router)
        self.received: list[Envelope] = []

    async def handle(self, envelope: Envelope) -> None:
        self.received.append(envelope)
        if envelope.corr is not None:
            await self.router.reply(envelope, ("echo", envelope.body))


A1 = Address.device("net-a", "one")
A2 = Address.device("net-a", "two")
B1 = Address.device("net-b", "one")


async def test_send_and_request_within_a_network() -> None:
    router = Router("i1")
    async with trio.open_nursery() as nursery:
        echo: Echo = await nursery.start(Echo(A2, router).run)
        await router.send(Envelope(A1, A2, "hello"))
        assert await router.request(A1, A2, 42, timeout_s=1) == ("echo", 42)
        assert [e.body for e in echo.received] == ["hello", 42]
        assert echo.received[0].src == A1  # the router keeps what the caller stamped
        nursery.cancel_scope.cancel()
    assert not router.is_local(A2)  # unregistered when the actor ended


async def test_foreign_and_nonexistent_are_the_same_unreachable() -> None:
    router = Router("i1")
    async with trio.open_nursery() as nursery:
        await nursery.start(Echo(B1, router).run)
        answers = []
        for dst in (B1, Address.device("net-b", "ghost"), Address.device("net-c", "one")):
            with pytest.raises(Unreachable) as info:
                await router.send(Envelope(A1, dst, "probe"))
            answers.append((type(info.value), str(info.value), info.value.args))
            with pytest.raises(Unreachable):
                await router.request(A1, dst, "probe", timeout_s=1)
        assert len(set(answers)) == 1
        nursery.cancel_scope.cancel()


async def test_request_times_out_and_late_replies_are_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = Router("i1")
    box: Mailbox[Envelope] = Mailbox(4)
    router.register(A2, box)
    with pytest.raises(RequestTimeout):
        await router.request(A1, A2, "slow", timeout_s=2)
    request = box.get_nowait()
    await router.reply(request, "too late")
    assert router.statistics().late_replies == 1
    assert router.statistics().pending_requests == 0


async def test_expired_requests_never_reach_the_handler(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = Router("i1")
    echo = Echo(A2, router)
    envelope = Envelope(A1, A2, "old", corr="i1:999", deadline=0.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(echo.run)
        await router.send(envelope)
        await trio.sleep(1)
        assert echo.received == []
        assert echo.expired == 1
        nursery.cancel_scope.cancel()


async def test_overloaded_mailbox_rejects() -> None:
    router = Router("i1")
    router.register(A2, Mailbox(1, Overflow.REJECT))
    await router.send(Envelope(A1, A2, 1))
    with pytest.raises(Overloaded):
        await router.send(Envelope(A1, A2, 2))


async def test_an_address_is_registered_once() -> None:
    router = Router("i1")
    router.register(A1, Mailbox(1))
    with pytest.raises(AddressInUse):
        router.register(A1, Mailbox(1))


async def test_services_are_reachable_from_every_tenant_and_can_answer() -> None:
    router = Router("i1")
    service = Address.service("locks")
    async with trio.open_nursery() as nursery:
        await nursery.start(Echo(service, router).run)
        assert await router.request(A1, service, "a", timeout_s=1) == ("echo", "a")
        assert await router.request(B1, service, "b", timeout_s=1) == ("echo", "b")
        nursery.cancel_scope.cancel()


async def test_bus_forwards_between_instances_with_the_same_rules() -> None:
    hub = InProcessHub()
    left, right = Router("left", hub.bus()), Router("right", hub.bus())
    async with trio.open_nursery() as nursery:
        await nursery.start(left.bus.serve)
        await nursery.start(right.bus.serve)
        echo: Echo = await nursery.start(Echo(A2, right).run)
        await nursery.start(Echo(B1, right).run)
        # A1 talks from the left instance to A2 on the right one: request and reply cross the bus.
        assert await left.request(A1, A2, "x", timeout_s=1) == ("echo", "x")
        assert echo.received[0].src == A1
        assert left.statistics().forwarded == 1
        with pytest.raises(Unreachable):
            await left.send(Envelope(A1, B1, "cross-tenant"))
        with pytest.raises(Unreachable):
            await left.send(Envelope(A1, Address.device("net-a", "nowhere"), "missing"))
        nursery.cancel_scope.cancel()


def test_address_text_round_trip() -> None:
    for text in ("device/n1/d1", "network/n1", "provider/p1", "service/locks"):
        assert str(Address.parse(text)) == text
    for bad in ("device/n1", "device/n1/d1/x", "host/x", "device//d", "network/"):
        with pytest.raises(ValueError, match="address"):
            Address.parse(bad)


segment = st.text(alphabet="abc", min_size=1, max_size=2)
addresses = st.one_of(
    st.builds(Address.device, segment, segment),
    st.builds(Address.of_network, segment),
    st.builds(Address.provider, segment),
    st.builds(Address.service, segment),
)


@given(src=addresses, dst=addresses)
def test_rule_never_crosses_a_tenant_boundary(src: Address, dst: Address) -> None:
    allowed = may_deliver(src, dst)
    if "service" not in (src.kind, dst.kind):
        # Without a tenant-aware service on either end, only one network's members may talk.
        assert allowed == (src.network is not None and src.network == dst.network)
    if allowed and "service" not in (src.kind, dst.kind):
        assert src.network == dst.network
    assert may_deliver(src, dst) == may_deliver(dst, src)  # replies can always travel back


@given(
    senders=st.lists(addresses, min_size=1, max_size=6),
    targets=st.lists(addresses, min_size=1, max_size=6, unique=True),
)
def test_router_delivers_exactly_what_the_rule_allows(
    senders: list[Address], targets: list[Address]
) -> None:
    async def main() -> None:
        router = Router("prop")
        boxes = {target: Mailbox[Envelope](64) for target in targets}
        for target, box in boxes.items():
            router.register(target, box)
        for src in senders:
            for dst in targets:
                try:
                    await router.send(Envelope(src, dst, "m"))
                    delivered = True
                except Unreachable:
                    delivered = False
                assert delivered == may_deliver(src, dst)
        for dst, box in boxes.items():
            while True:
                try:
                    envelope = box.get_nowait()
                except trio.WouldBlock:
                    break
                assert envelope.dst == dst
                assert may_deliver(envelope.src, envelope.dst)

    trio.run(main)
