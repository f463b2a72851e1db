"""One line per event, as text for people or JSON for machines."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "level": ..., "logger": ..., "msg": ..., <extra fields>}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool)) else repr(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


class _InstanceFilter(logging.Filter):
    """Stamps every record with the instance id, so lines from many instances can be told apart."""

    def __init__(self) -> None:
        super().__init__()
        self.instance = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if self.instance and not hasattr(record, "instance"):
            record.instance = self.instance
        return True


_instance_filter = _InstanceFilter()


def set_instance(instance_id: str) -> None:
    """Name the instance in every following log record (JSON field ``instance``)."""
    _instance_filter.instance = instance_id


def configure(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_instance_filter)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.set_name("yggdrasil")
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == "yggdrasil":  # ours, from an earlier call
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The API's access log is ours (logger "api.access", with the fields of every other line);
    # hypercorn's own stays quiet, its errors still come through. hypercorn's "Running on"
    # repeats our own listener line.
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)
    logging.getLogger("hypercorn.error").setLevel(logging.WARNING)
