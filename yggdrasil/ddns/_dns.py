"""RFC 2136 dynamic updates, signed with TSIG (RFC 8945), sent with dnspython over TCP on trio.

One update replaces a name's A and AAAA records with the addresses given (an empty list deletes
both), in one message: the zone's server applies it whole or not at all (RFC 2136 section 3.7).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from pathlib import Path

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.name
import dns.rcode
import dns.tsig
import dns.tsigkeyring
import dns.update

from .._config import DdnsConfig
from .._errors import ConfigError

_ALGORITHMS = {
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}


class UpdateFailed(Exception):
    """The zone's server did not apply an update: refused, unreachable, timed out, or the TSIG
    signature did not verify (either way). The message says which, never the key."""


def _server(text: str) -> tuple[str, int]:
    host, port = text, 53
    if text.startswith("["):  # [2001:db8::53]:53
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        port = int(number)
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(port)
    return host, port


def _secret(config: DdnsConfig) -> str:
    if config.key_secret and config.key_file:
        raise ConfigError("ddns: key_secret and key_file are alternatives; set one")
    secret = config.key_secret
    if config.key_file:
        try:
            secret = Path(config.key_file).read_text("utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"ddns.key_file: cannot read {config.key_file}: {exc.strerror}"
            ) from None
    if not secret:
        raise ConfigError("ddns: a zone needs its TSIG key: key_secret or key_file")
    try:
        base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        where = f"ddns.key_file {config.key_file}" if config.key_file else "ddns.key_secret"
        raise ConfigError(f"{where}: the TSIG secret is not base64") from None
    return secret


class Updater:
    """Sends the updates for one zone, as ``config`` says (checked here: a bad ``[ddns]``
    section is :class:`ConfigError` naming the key)."""

    def __init__(self, config: DdnsConfig) -> None:
        try:
            self.zone = dns.name.from_text(config.zone)
        except dns.exception.DNSException:
            raise ConfigError(f"ddns.zone: {config.zone!r} is not a DNS name") from None
        try:
            self.host, self.port = _server(config.server)
        except ValueError:
            raise ConfigError(
                f"ddns.server must be an IP address and port (like 192.0.2.53:53),"
                f" not {config.server!r}"
            ) from None
        if not config.key_name:
            raise ConfigError("ddns: a zone needs key_name (the TSIG key's name)")
        try:
            self._key_name = dns.name.from_text(config.key_name)
        except dns.exception.DNSException:
            raise ConfigError(f"ddns.key_name: {config.key_name!r} is not a DNS name") from None
        self._keyring = dns.tsigkeyring.from_text({config.key_name: _secret(config)})
        self._algorithm = _ALGORITHMS[config.key_algorithm]
        self.ttl = config.ttl_s
        self.timeout_s = config.timeout_s

    def name(self, label: str) -> str:
        """The full name of ``label`` in the zone, without the final dot."""
        return dns.name.Name((label, *self.zone.labels)).to_text(omit_final_dot=True)

    async def replace(self, label: str, addresses: list[str]) -> None:
        """Make ``label``'s A and AAAA records exactly ``addresses``; :class:`UpdateFailed`
        if the server did not. Cancellation abandons the exchange (nothing is half-applied:
        the server applies an update whole)."""
        update = dns.update.UpdateMessage(
            self.zone,
            keyring=self._keyring,
            keyname=self._key_name,
            keyalgorithm=self._algorithm,
        )
        v4 = [a for a in addresses if ipaddress.ip_address(a).version == 4]
        v6 = [a for a in addresses if ipaddress.ip_address(a).version == 6]
        for rdtype, values in (("A", v4), ("AAAA", v6)):
            if values:
                update.replace(label, self.ttl, rdtype, *values)
            else:
                update.delete(label, rdtype)
        try:
            answer = await dns.asyncquery.tcp(
                update,
                self.host,
                timeout=self.timeout_s,
                port=self.port,
                backend=dns.asyncbackend.get_backend("trio"),
            )
        except dns.exception.Timeout:
            raise UpdateFailed(f"no answer from {self.host}:{self.port} in time") from None
        except dns.tsig.PeerError as exc:
            raise UpdateFailed(f"the server refused the TSIG signature: {exc}") from None
        except dns.exception.DNSException as exc:
            raise UpdateFailed(f"{type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise UpdateFailed(f"cannot reach {self.host}:{self.port}: {exc.strerror}") from None
        rcode = answer.rcode()
        if rcode != dns.rcode.NOERROR:
            raise UpdateFailed(f"the server answered {dns.rcode.to_text(rcode)}")
