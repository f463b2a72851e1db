"""Secrets generated for each data directory on first start; nothing secret lives in the code.

``<data-dir>/secrets/`` (mode 0700) holds, each in a file of mode 0600:

- ``signing-key.pem``: the Ed25519 key that signs access tokens (PKCS #8 PEM);
- ``data-key``: 32 random bytes (base64) for AES-256-GCM encryption of data that must be read back;
- ``turn-secret``: 32 random bytes (base64) for the HMAC of ephemeral TURN credentials.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ._errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Secrets:
    signing_key: Ed25519PrivateKey
    signing_kid: str
    data_key: bytes
    turn_secret: bytes


def _create_exclusive(path: Path, content: bytes) -> None:
    """Write a new file readable by the owner only; never replaces an existing one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_or_create(path: Path, make: Callable[[], bytes]) -> bytes:
    try:
        _create_exclusive(path, make())
        log.info("generated secret %s", path.name)
    except FileExistsError:
        pass
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("secret %s had mode %o; restricting it to 0600", path.name, mode)
        path.chmod(0o600)
    return path.read_bytes()


def _new_signing_key() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _random_b64() -> bytes:
    return base64.b64encode(secrets.token_bytes(32)) + b"\n"


def load_or_create(data_dir: Path) -> Secrets:
    folder = data_dir / "secrets"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    try:
        pem = _read_or_create(folder / "signing-key.pem", _new_signing_key)
        key = serialization.load_pem_private_key(pem, password=None)
        data_key = base64.b64decode(_read_or_create(folder / "data-key", _random_b64))
        turn_secret = base64.b64decode(_read_or_create(folder / "turn-secret", _random_b64))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the secrets in {folder}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey) or len(data_key) != 32 or len(turn_secret) != 32:
        raise ConfigError(f"a secret in {folder} has the wrong type or length")
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    kid = hashlib.sha256(public).hexdigest()[:16]
    return Secrets(key, kid, data_key, turn_secret)
