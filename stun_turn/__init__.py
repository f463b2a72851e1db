"""A generic STUN/TURN server library (sans-IO core, trio drivers). Knows nothing of users.

So far: the strict message codec (RFC 8489 STUN, RFC 8656 TURN attributes, ChannelData), verified
against RFC 5769's test vectors; the peer deny list; the allocation state and logic (sans-IO);
the trio drivers for UDP, TCP and TLS (a certificate that can change while the server runs).
"""

from ._codec import (
    MAGIC_COOKIE,
    Attr,
    Class,
    Message,
    Method,
    comprehension_required,
    decode,
    decode_channel_data,
    encode,
    encode_channel_data,
    is_channel_data,
    is_stun,
    long_term_key,
    pack_error_code,
    pack_unknown_attributes,
    pack_xor_address,
    stream_frame_length,
    unpack_error_code,
    unpack_xor_address,
    verify_integrity,
)
from ._errors import StunDecodeError, StunError
from ._listener import TurnListener
from ._policy import PeerPolicy, canonical
from ._server import (
    Client,
    CloseRelay,
    Owner,
    ToClient,
    ToPeer,
    TurnCore,
    TurnSettings,
    TurnStats,
)

__all__ = [
    "MAGIC_COOKIE",
    "Attr",
    "Class",
    "Client",
    "CloseRelay",
    "Message",
    "Method",
    "Owner",
    "PeerPolicy",
    "StunDecodeError",
    "StunError",
    "ToClient",
    "ToPeer",
    "TurnCore",
    "TurnListener",
    "TurnSettings",
    "TurnStats",
    "canonical",
    "comprehension_required",
    "decode",
    "decode_channel_data",
    "encode",
    "encode_channel_data",
    "is_channel_data",
    "is_stun",
    "long_term_key",
    "pack_error_code",
    "pack_unknown_attributes",
    "pack_xor_address",
    "stream_frame_length",
    "unpack_error_code",
    "unpack_xor_address",
    "verify_integrity",
]
