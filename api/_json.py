"""Reading JSON request bodies within bounds: size (``api.max_body_bytes``, answered 413 before
the body is read) and nesting depth (answered 400 before the body is parsed).

A parser that recurses can be made to run out of stack by a small body of nested brackets; the
depth is checked on the raw text first, so no parser ever sees such a body.
"""

from __future__ import annotations

import array
import itertools
import re
from typing import Any

import msgspec
from quart import Response
from quart.json.provider import JSONProvider

from yggdrasil import YggdrasilError

MAX_DEPTH = 32
"""Deeper than any body the API takes; the deepest today nests 4 levels."""

# Brackets inside JSON strings (RFC 8259 section 7) do not nest. Escapes go first (each is two
# bytes, so this never backtracks); then a string is a quote, non-quotes and a quote.
_ESCAPE = re.compile(rb"\\.", re.S)
_STRING = re.compile(rb'"[^"]*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEPS = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")  # +1 and -1 as signed bytes


class MalformedJson(YggdrasilError):
    status = 400
    code = "bad_request"
    default_message = "the request body is not valid JSON"


def nesting_depth(text: bytes) -> int:
    """How deeply arrays and objects nest in the JSON ``text`` (0 for a scalar).

    Linear in the length, in C: about 20 ms for a megabyte of nothing but brackets.
    """
    brackets = _STRING.sub(b"", _ESCAPE.sub(b"", text)).translate(_STEPS, _NOT_BRACKETS)
    return max(itertools.accumulate(array.array("b", brackets)), default=0)


def decode_body(data: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of a request body, or :class:`MalformedJson` (400) naming the problem."""
    raw = data.encode() if isinstance(data, str) else data
    openers = raw.count(b"[") + raw.count(b"{")
    if openers > max_depth and nesting_depth(raw) > max_depth:
        raise MalformedJson(f"the request body nests deeper than {max_depth} levels")
    try:
        return msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise MalformedJson(f"the request body is not valid JSON: {exc}") from None


class BoundedJSONProvider(JSONProvider):
    """The application's JSON provider (``inner``: quart-schema's, which writes responses),
    with request bodies read by :func:`decode_body`."""

    def __init__(self, app: Any, inner: JSONProvider) -> None:
        super().__init__(app)
        self._inner = inner

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return self._inner.dumps(obj, **kwargs)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return decode_body(s)

    def response(self, *args: Any, **kwargs: Any) -> Any:
        """A JSON response of ``args`` or ``kwargs`` (as Flask's), encoded by msgspec: compact,
        UTF-8, keys in the order they were built; about ten times as fast as ``json``."""
        obj = self._prepare_response_obj(args, kwargs)
        return Response(_RESPONSE_ENCODER.encode(obj), mimetype="application/json")


_RESPONSE_ENCODER = msgspec.json.Encoder()
