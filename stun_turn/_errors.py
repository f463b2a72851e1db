"""The package's one exception root."""

from __future__ import annotations


class StunError(Exception):
    """Root of the errors this package raises on purpose."""


class StunDecodeError(StunError):
    """Bytes that are not a well-formed STUN message or ChannelData frame.

    Raised only by the decoders; the server drops such datagrams (and counts them).
    """
