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
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Secrets:
    signing_key: Ed25519PrivateKey
    signing_kid: str
    data_key: bytes
    turn_secret: bytes
    retired_keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    """Keys that signed tokens before the last rotations: still accepted for verification."""


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The ``kid`` of a key: a hash of its public half."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def rotate_signing_key(data_dir: Path) -> tuple[str, str]:
    """Retire the current signing key (kept for verification) and generate a new one.

    Returns ``(old_kid, new_kid)``. Running servers pick the new key up at their next start.
    """
    folder = data_dir / "secrets"
    current = folder / "signing-key.pem"
    old = serialization.load_pem_private_key(current.read_bytes(), password=None)
    if not isinstance(old, Ed25519PrivateKey):
        raise ConfigError(f"{current} is not an Ed25519 key")
    retired = folder / "retired"
    retired.mkdir(mode=0o700, exist_ok=True)
    old_kid = key_id(old)
    public_pem = old.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    target = retired / f"{old_kid}.pub.pem"
    if not target.exists():
        _create_exclusive(target, public_pem)
    fresh = folder / "signing-key.pem.new"
    fresh.unlink(missing_ok=True)
    _create_exclusive(fresh, _new_signing_key())
    os.replace(fresh, current)
    new = serialization.load_pem_private_key(current.read_bytes(), password=None)
    assert isinstance(new, Ed25519PrivateKey)
    return old_kid, key_id(new)


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
    retired: dict[str, Ed25519PublicKey] = {}
    for path in sorted((folder / "retired").glob("*.pub.pem")):
        public = serialization.load_pem_public_key(path.read_bytes())
        if isinstance(public, Ed25519PublicKey):
            retired[key_id(public)] = public
    return Secrets(key, key_id(key), data_key, turn_secret, retired)
