"""The configuration tree: TOML file, then ``YGG_`` environment, then command-line flags.

Every section rejects unknown keys, naming the key. Environment variables are
``YGG_<SECTION>_<KEY>``, e.g. ``YGG_API_PORT=9000`` or ``YGG_DATABASE_URL=postgresql://...``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from ._errors import ConfigError

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerConfig(_Section, frozen=True):
    host: str = "127.0.0.1"
    """Address every listener binds to."""
    data_dir: str = "./yggdrasil-data"
    """SQLite database, generated secrets and the e-mail outbox live here."""
    instance_id: str = ""
    """Name of this instance on the bus; empty: generated at start-up."""
    grace_s: Seconds = 10.0
    """How long a graceful shutdown may take before everything left is cancelled."""


class ApiConfig(_Section, frozen=True):
    port: Port = 8080
    max_body_bytes: Positive = 1_048_576
    """Larger request bodies get 413."""
    body_timeout_s: Seconds = 30.0
    response_timeout_s: Seconds = 30.0


class GatewayConfig(_Section, frozen=True):
    port: Port = 8081


class TurnConfig(_Section, frozen=True):
    port: Port = 3478


class DatabaseConfig(_Section, frozen=True):
    url: str = ""
    """Empty: SQLite in the data directory. ``postgresql://user@host:port/db`` for PostgreSQL."""
    pool_min: Annotated[int, msgspec.Meta(ge=0)] = 1
    pool_max: Positive = 10
    connect_timeout_s: Seconds = 30.0
    """How long start-up keeps retrying an unreachable database before it gives up."""
    query_timeout_s: Seconds = 10.0


class BusConfig(_Section, frozen=True):
    url: str = ""
    """Empty: the in-process bus (a single instance)."""


class LogConfig(_Section, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class Config(_Section, frozen=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    gateway: GatewayConfig = msgspec.field(default_factory=GatewayConfig)
    turn: TurnConfig = msgspec.field(default_factory=TurnConfig)
    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    bus: BusConfig = msgspec.field(default_factory=BusConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir)


_SECTIONS: dict[str, type[_Section]] = {
    "server": ServerConfig,
    "api": ApiConfig,
    "gateway": GatewayConfig,
    "turn": TurnConfig,
    "database": DatabaseConfig,
    "bus": BusConfig,
    "log": LogConfig,
}


def _environment_layer(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    layer: dict[str, dict[str, Any]] = {}
    for name, value in environ.items():
        if not name.startswith("YGG_"):
            continue
        section, _, key = name[4:].lower().partition("_")
        typ = _SECTIONS.get(section)
        if typ is None or key not in typ.__struct_fields__:
            raise ConfigError(f"unknown configuration variable {name}")
        layer.setdefault(section, {})[key] = value
    return layer


def _merge(base: dict[str, Any], layer: Mapping[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Build the configuration; raises :class:`ConfigError` naming the offending key or variable.

    ``overrides`` are the command-line flags, as ``{"section": {"key": value}}``.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    _merge(data, _environment_layer(environ or {}))
    _merge(data, overrides or {})
    try:
        # strict=False lets "8080" from the environment become the integer 8080.
        return msgspec.convert(data, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
