"""The envelope every message travels in, and its wire form between instances."""

from __future__ import annotations

from typing import Any, Union

import msgspec

from ._address import Address


class Envelope(msgspec.Struct, frozen=True, array_like=True):
    """One message from ``src`` to ``dst``.

    ``body`` is a tagged msgspec Struct of one of the application's protocols (the :class:`Codec`
    that carries envelopes between instances knows them all). ``corr`` is set on requests and
    their replies (``is_reply``); its prefix names the router instance that waits for the reply.
    ``deadline`` is the requester's deadline in seconds on the wall clock (``time.time()``), so it
    means the same on every instance.
    """

    src: Address
    dst: Address
    body: msgspec.Struct
    corr: str | None = None
    is_reply: bool = False
    deadline: float | None = None


class Urgent(msgspec.Struct, frozen=True):
    """Base of message types an actor must see at once, ahead of its queue (stop, replace,
    revoke): the actor's :meth:`~actors.Actor.interrupt` gets them, never its mailbox's line."""


class Codec:
    """Envelopes as MessagePack, for the bus between instances.

    Built from every message type the application's actors send: each must be a msgspec Struct
    with a tag (``tag=...`` or ``tag=True``), and the tags must differ, so that one typed decoder
    gives back exactly the Struct that was sent. Decoding validates; anything else raises
    ``msgspec.DecodeError`` (or ``ValidationError``, its subclass).
    """

    def __init__(self, *types: type[msgspec.Struct]) -> None:
        if not types:
            raise ValueError("a codec needs the message types it carries")
        for kind in types:
            config = getattr(kind, "__struct_config__", None)
            if config is None or config.tag is None:
                raise ValueError(f"{kind.__name__} is not a tagged msgspec Struct")
        self.types = frozenset(types)
        body: Any = Union[tuple(types)]  # noqa: UP007 - built from a runtime tuple
        wire = msgspec.defstruct(
            "WireEnvelope",
            [
                ("src", Address),
                ("dst", Address),
                ("body", body),
                ("corr", str | None, None),
                ("is_reply", bool, False),
                ("deadline", float | None, None),
            ],
            array_like=True,
            frozen=True,
        )
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(wire)

    def encode(self, envelope: Envelope) -> bytes:
        if type(envelope.body) not in self.types:
            raise TypeError(f"{type(envelope.body).__name__} is not a message type of this codec")
        return self._encoder.encode(envelope)

    def decode(self, data: bytes | memoryview) -> Envelope:
        wire = self._decoder.decode(data)
        return Envelope(wire.src, wire.dst, wire.body, wire.corr, wire.is_reply, wire.deadline)
