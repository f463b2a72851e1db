"""Personal data at rest: AES-256-GCM encryption with a keyring, and keyed blind indexes.

A sealed value is the text ``enc:<kid>:<base64url(nonce || ciphertext || tag)>``: it names the
key that sealed it, so that a keyring with several keys reads every row while new writes use the
current key (rotation without downtime, :func:`rotate_data_key`). The additional authenticated
data binds a value to its place (``table.column/owner``): a ciphertext copied into another
column or another user's row does not open. A value written before encryption existed reads
``plain:<text>`` (migration 0011 marks them so) until the conversion seals it.

A blind index is ``HMAC-SHA256(index key, kind || 0 || normalized value)``: equality lookups
(sign-in by e-mail, an OIDC subject, a code budget per client address) without the database
holding the value. It reveals which rows share a value, nothing else; its key never rotates
(every index would have to be recomputed at once).

The keyring is a JSON file (mode 0600): ``{"current": kid, "keys": {kid: base64 key},
"index_key": base64 key}``, in the data directory's ``secrets/data-keyring.json`` (generated on
first start from ``secrets/data-key``) or where ``encryption.key_file`` says. A :class:`Vault`
reads it again on :meth:`Vault.reload` and whenever it meets a key id it does not know, so that
every instance reads rows sealed under a key that another instance's keyring file just gained.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._errors import ConfigError, YggdrasilError

log = logging.getLogger(__name__)

SEALED = "enc:"
PLAIN = "plain:"
KEYRING_NAME = "data-keyring.json"
_NONCE = 12


class DataKeyMissing(YggdrasilError):
    """A sealed value names a key that the keyring does not hold (or it does not open)."""

    code = "data_key_missing"
    default_message = "a stored value cannot be decrypted with the configured data keys"


@dataclass(frozen=True)
class Keyring:
    current: str
    keys: Mapping[str, bytes]
    index_key: bytes

    def encode(self) -> bytes:
        text = {
            "current": self.current,
            "keys": {kid: base64.b64encode(key).decode() for kid, key in self.keys.items()},
            "index_key": base64.b64encode(self.index_key).decode(),
        }
        return json.dumps(text, indent=2).encode() + b"\n"

    @classmethod
    def decode(cls, raw: bytes, where: Path) -> Keyring:
        try:
            text = json.loads(raw)
            keys = {str(k): base64.b64decode(v, validate=True) for k, v in text["keys"].items()}
            ring = cls(str(text["current"]), keys, base64.b64decode(text["index_key"]))
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise ConfigError(f"the data keyring {where} is malformed: {exc}") from None
        if ring.current not in keys or any(len(k) != 32 for k in keys.values()):
            raise ConfigError(f"the data keyring {where} has no current 32-byte key")
        if len(ring.index_key) != 32 or any(":" in kid or not kid for kid in keys):
            raise ConfigError(f"the data keyring {where} has a bad index key or key id")
        return ring

    @classmethod
    def fresh(cls, first: bytes | None = None) -> Keyring:
        kid = _new_kid()
        return cls(kid, {kid: first or AESGCM.generate_key(256)}, secrets.token_bytes(32))


def _new_kid() -> str:
    return secrets.token_hex(4)


class Vault:
    """Seals and opens personal data with the keyring, and computes blind indexes.

    Opening needs the key a value names; sealing always uses the current key. Thread-safe in the
    sense that matters here: the keyring is replaced whole, never changed in place.
    """

    def __init__(self, ring: Keyring, path: Path | None = None) -> None:
        self._ring = ring
        self._ciphers = {kid: AESGCM(key) for kid, key in ring.keys.items()}
        self.path = path
        """Where the keyring is read again from; ``None`` for one that lives in memory."""

    @classmethod
    def ephemeral(cls) -> Vault:
        """A keyring in memory only: what a database opened without one gets (tests, tools).
        What it seals is unreadable once the process ends."""
        return cls(Keyring.fresh())

    @property
    def current(self) -> str:
        return self._ring.current

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._ring.keys)

    def reload(self) -> bool:
        """Read the keyring file again; whether its current key changed."""
        if self.path is None:
            return False
        ring = Keyring.decode(self.path.read_bytes(), self.path)
        changed = ring.current != self._ring.current
        if ring != self._ring:
            missing = set(self._ring.keys) - set(ring.keys)
            if missing:
                log.warning("the data keyring dropped keys %s", sorted(missing))
            self._ciphers = {kid: AESGCM(key) for kid, key in ring.keys.items()}
            self._ring = ring
        return changed

    # ------------------------------------------------------------------ values

    def seal(self, text: str, place: str) -> str:
        """``text`` sealed under the current key, bound to ``place`` (``table.column/owner``)."""
        nonce = os.urandom(_NONCE)
        body = self._ciphers[self.current].encrypt(nonce, text.encode(), place.encode())
        return f"{SEALED}{self.current}:{base64.urlsafe_b64encode(nonce + body).decode()}"

    def seal_optional(self, text: str | None, place: str) -> str | None:
        """``None`` and ``""`` stay as they are (nothing to hide); anything else is sealed."""
        return self.seal(text, place) if text else text

    def open(self, value: str, place: str) -> str:
        """The text of a sealed value (``plain:`` values read as their text; anything else is
        returned as it is: an empty name, a value no one sealed). :class:`DataKeyMissing` if
        its key is unknown or it was not sealed for ``place``."""
        if value.startswith(PLAIN):
            return value[len(PLAIN) :]
        if not value.startswith(SEALED):
            return value
        kid, _, body = value[len(SEALED) :].partition(":")
        cipher = self._ciphers.get(kid)
        if cipher is None and self.path is not None:
            self.reload()  # another instance may have rotated: its key is in the file by now
            cipher = self._ciphers.get(kid)
        if cipher is None:
            raise DataKeyMissing(f"data key {kid} is not in the keyring")
        try:
            raw = base64.urlsafe_b64decode(body)
            return cipher.decrypt(raw[:_NONCE], raw[_NONCE:], place.encode()).decode()
        except (InvalidTag, ValueError, binascii.Error):
            raise DataKeyMissing(f"a value sealed with data key {kid} does not open") from None

    def open_optional(self, value: str | None, place: str) -> str | None:
        return None if value is None else self.open(value, place)

    def needs_sealing(self, value: str | None) -> bool:
        """Whether ``value`` is plaintext marked by the migration or sealed under an old key."""
        if not value:
            return False
        return value.startswith(PLAIN) or (
            value.startswith(SEALED) and not value.startswith(f"{SEALED}{self.current}:")
        )

    def index(self, kind: str, text: str) -> str:
        """The blind index of ``text`` among values of ``kind`` (``email``, ``oidc-subject``,
        ``source``): equal texts give equal indexes, and nothing else can be learned from it."""
        mac = hmac.new(self._ring.index_key, f"{kind}\0{text}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")

    # ------------------------------------------------------------------ audit details

    def seal_detail(
        self, detail: dict[str, Any], keys: tuple[str, ...] = ("ip",)
    ) -> dict[str, Any]:
        """An audit entry's detail with its personal values (by default ``ip``) sealed: the
        audit log never changes a row, so these keep the key they were sealed with."""
        return {
            k: (self.seal(v, f"audit.{k}") if k in keys and isinstance(v, str) else v)
            for k, v in detail.items()
            if v or k not in keys  # an unknown address is left out, not sealed
        }

    def open_detail(self, detail: dict[str, Any]) -> dict[str, Any]:
        """An audit entry's detail with its sealed values opened (for its owner's export); a
        value under a key no longer held reads ``null``."""
        opened: dict[str, Any] = {}
        for k, v in detail.items():
            if isinstance(v, str) and v.startswith(SEALED):
                try:
                    v = self.open(v, f"audit.{k}")
                except DataKeyMissing:
                    v = None
            opened[k] = v
        return opened


# ---------------------------------------------------------------------- the keyring file


def keyring_path(data_dir: Path, key_file: str) -> Path:
    return Path(key_file) if key_file else data_dir / "secrets" / KEYRING_NAME


def _write(path: Path, ring: Keyring, *, exclusive: bool = False) -> None:
    """Replace the keyring file atomically (a reader sees the old or the new one, whole); with
    ``exclusive``, only create it: ``FileExistsError`` if another process made it first."""
    fresh = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.new")
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, ring.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(fresh, path)
        else:
            os.replace(fresh, path)
    finally:
        fresh.unlink(missing_ok=True)


def open_vault(data_dir: Path, key_file: str = "", *, create: bool = True) -> Vault | None:
    """The vault of this installation: the keyring in ``key_file`` (which must exist) or in
    the data directory's secrets, made there on first use from ``secrets/data-key`` when
    ``create`` (the data directory's secrets must exist then: :func:`load_or_create`). ``None``
    when there is none and ``create`` is false. :class:`ConfigError` for an unreadable one."""
    path = keyring_path(data_dir, key_file)
    if not path.exists():
        if key_file:
            raise ConfigError(
                f"no data keyring at {path} (encryption.key_file): create it with"
                " 'yggdrasil keys rotate-data'"
            )
        if not create:
            return None
        legacy = data_dir / "secrets" / "data-key"
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            first = base64.b64decode(legacy.read_bytes()) if legacy.exists() else None
            ring = Keyring.fresh(first if first and len(first) == 32 else None)
            _write(path, ring, exclusive=True)
            log.info("generated the data keyring %s", path.name)
        except FileExistsError:
            pass  # another process made it first
        except OSError as exc:
            raise ConfigError(f"cannot create the data keyring {path}: {exc}") from None
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the data keyring {path}: {exc}") from None
    return Vault(Keyring.decode(raw, path), path)


def rotate_data_key(data_dir: Path, key_file: str = "") -> tuple[str | None, str]:
    """Add a new current data key to the keyring (created if there is none); the old keys
    stay, for what they sealed. Returns ``(old_kid, new_kid)``. Running instances read the
    file again within ``encryption.reencrypt_interval_s`` (or at the first value under the new
    key) and re-encrypt their mutable rows."""
    path = keyring_path(data_dir, key_file)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        ring = Keyring.fresh()
        _write(path, ring, exclusive=True)
        return None, ring.current
    ring = Keyring.decode(path.read_bytes(), path)
    kid = _new_kid()
    while kid in ring.keys:
        kid = _new_kid()
    _write(path, Keyring(kid, {**ring.keys, kid: AESGCM.generate_key(256)}, ring.index_key))
    return ring.current, kid


def retire_data_key(data_dir: Path, key_file: str, kid: str) -> None:
    """Remove a key that nothing uses any more (the caller checked); never the current one."""
    path = keyring_path(data_dir, key_file)
    ring = Keyring.decode(path.read_bytes(), path)
    if kid not in ring.keys:
        raise ConfigError(f"no data key {kid} in {path}")
    if kid == ring.current:
        raise ConfigError(f"data key {kid} is the current one: rotate first")
    keys = {k: v for k, v in ring.keys.items() if k != kid}
    _write(path, Keyring(ring.current, keys, ring.index_key))
