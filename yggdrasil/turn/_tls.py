"""The certificate of TURN over TLS, and its renewal while the server runs.

Certificates are short-lived (Let's Encrypt's last 90 days or less) and renewed in place, often by
``certbot`` swapping the symbolic links under ``live/``. The files are looked at (two ``stat``
calls, following links) whenever a TLS connection is accepted; when either changed, a new context
is loaded for that connection and the ones after it. Established connections keep the context they
were accepted with. A file caught half-written, or a certificate that does not match its key,
leaves the previous context in use until the files change again.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

from .._errors import ConfigError

log = logging.getLogger(__name__)

_Signature = tuple[tuple[int, int, int, int, int] | None, ...]


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context with the PEM certificate chain and key; :class:`ConfigError` naming the
    file and what is wrong with it."""
    for key, path in (("turn.tls_cert_file", cert_file), ("turn.tls_key_file", key_file)):
        try:
            Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{key} {path}: {exc.strerror or exc}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or "not a PEM certificate and key"
        raise ConfigError(
            f"turn.tls_cert_file {cert_file} and turn.tls_key_file {key_file}: cannot be loaded "
            f"({str(reason).lower().replace('_', ' ')})"
        ) from None
    return context


def check_tls(cert_file: str, key_file: str) -> None:
    """:class:`ConfigError` unless both files are set and load, or neither is set."""
    if bool(cert_file) != bool(key_file):
        raise ConfigError("turn.tls_cert_file and turn.tls_key_file must be set together")
    if cert_file:
        tls_context(cert_file, key_file)


def _signature(*paths: str) -> _Signature:
    found: list[tuple[int, int, int, int, int] | None] = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            found.append(None)
            continue
        found.append((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns))
    return tuple(found)


class ReloadingContext:
    """The current TLS context of a certificate and key file pair; call it for each new
    connection (``stun_turn``'s ``ContextSource``). It never raises once built."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        """Loads the files now: :class:`ConfigError` if they do not load."""
        self.cert_file = cert_file
        self.key_file = key_file
        self._signature = _signature(cert_file, key_file)
        self._context = tls_context(cert_file, key_file)
        self.reloads = 0
        """How many times a changed certificate was loaded."""

    def __call__(self) -> ssl.SSLContext:
        signature = _signature(self.cert_file, self.key_file)
        if signature != self._signature:
            # Taken before loading: files that change during the load are loaded again next time.
            self._signature = signature
            try:
                self._context = tls_context(self.cert_file, self.key_file)
            except ConfigError as exc:
                log.warning("turn: the changed TLS certificate is not used: %s", exc)
            else:
                self.reloads += 1
                log.info("turn: TLS certificate reloaded from %s", self.cert_file)
        return self._context
