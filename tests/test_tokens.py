"""Access tokens under attack (RFC 8725): every forgery is refused with the same error."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from yggdrasil import InvalidToken, TokenService, load_or_create
from yggdrasil._secrets import rotate_signing_key


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64(text: str) -> dict[str, object]:
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    return decoded


def parts(token: str) -> tuple[dict[str, object], dict[str, object], str]:
    header, payload, signature = token.split(".")
    return unb64(header), unb64(payload), signature


def assemble(header: dict[str, object], payload: dict[str, object], signature: str) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{signature}"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(tmp_path: Path, clock: Clock) -> TokenService:
    return TokenService(
        load_or_create(tmp_path), issuer="ygg", audience="ygg-api", access_ttl_s=900, clock=clock
    )


def issue(service: TokenService, **extra: str) -> str:
    token, _ = service.issue(user_id="u_1", role="user", family_id="f_1", **extra)
    return token


def refused(service: TokenService, token: str) -> None:
    with pytest.raises(InvalidToken) as info:
        service.verify(token)
    assert str(info.value) == InvalidToken.default_message


def test_a_users_token_names_their_home_network_and_a_devices_only_its_own(
    service: TokenService,
) -> None:
    # Device requests without a network go to the home network: no store read to find it.
    user = service.verify(issue(service, home_network_id="n_home"))
    assert (user.network_id, user.device_id, user.home_network_id) == (None, None, "n_home")
    device = service.verify(
        issue(service, network_id="n_2", device_id="laptop", home_network_id="n_home")
    )
    assert (device.network_id, device.home_network_id) == ("n_2", None)
    assert "hnid" not in parts(issue(service, network_id="n_2", device_id="laptop"))[1]


def test_a_valid_token_gives_its_principal(service: TokenService) -> None:
    token = issue(service, network_id="n_1", device_id="laptop")
    principal = service.verify(token)
    assert (principal.user_id, principal.role, principal.network_id, principal.device_id) == (
        "u_1",
        "user",
        "n_1",
        "laptop",
    )
    header, claims, _ = parts(token)
    assert header["alg"] == "Ed25519"
    assert header["typ"] == "at+jwt"
    assert claims["iss"] == "ygg"
    assert claims["aud"] == "ygg-api"


def test_alg_none_is_refused(service: TokenService) -> None:
    header, claims, _ = parts(issue(service))
    refused(service, assemble({**header, "alg": "none"}, claims, ""))
    refused(service, assemble({**header, "alg": "none"}, claims, "x"))


def test_key_confusion_hmac_with_the_public_key_is_refused(
    service: TokenService, tmp_path: Path
) -> None:
    header, claims, _ = parts(issue(service))
    public = load_or_create(tmp_path).signing_key.public_key()
    for key_bytes in (
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    ):
        forged_header = {**header, "alg": "HS256"}
        signing_input = (
            f"{b64(json.dumps(forged_header).encode())}.{b64(json.dumps(claims).encode())}"
        )
        mac = hmac.new(key_bytes, signing_input.encode(), hashlib.sha256).digest()
        refused(service, f"{signing_input}.{b64(mac)}")


@pytest.mark.parametrize(
    ("field", "value"),
    [("aud", "someone-else"), ("iss", "evil"), ("exp", 1), ("sub", ""), ("role", "operator")],
)
def test_changed_claims_are_refused(service: TokenService, field: str, value: object) -> None:
    header, claims, signature = parts(issue(service))
    refused(service, assemble(header, {**claims, field: value}, signature))


def test_wrong_typ_and_unknown_kid_are_refused(service: TokenService) -> None:
    header, claims, signature = parts(issue(service))
    refused(service, assemble({**header, "typ": "JWT"}, claims, signature))
    refused(service, assemble({**header, "kid": "0000000000000000"}, claims, signature))


def test_tampered_signature_and_garbage_are_refused(service: TokenService) -> None:
    token = issue(service)
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    refused(service, flipped)
    for garbage in ("", "a.b", "a.b.c", "....", "x" * 5000, token + "x"):
        refused(service, garbage)


def test_a_token_signed_by_another_key_with_our_claims_is_refused(
    service: TokenService, tmp_path: Path, clock: Clock
) -> None:
    other = TokenService(
        load_or_create(tmp_path / "other"),
        issuer="ygg",
        audience="ygg-api",
        access_ttl_s=900,
        clock=clock,
    )
    refused(service, issue(other))


def test_expiry(service: TokenService, clock: Clock) -> None:
    token = issue(service)
    service.verify(token)  # verified once, then remembered: expiry still counts
    clock.now += 900 + 29  # within the 30 s leeway
    service.verify(token)
    clock.now += 2
    refused(service, token)


def test_revocation_by_user_device_and_family(service: TokenService, clock: Clock) -> None:
    device_token = issue(service, network_id="n_1", device_id="d")
    plain = issue(service)
    service.verify(device_token)  # remembered as verified: revocation still counts
    service.revoke("device:n_1/d", int(clock.now * 1000) + 1)
    refused(service, device_token)
    service.verify(plain)
    service.revoke("family:f_1", int(clock.now * 1000) + 1)
    refused(service, plain)
    clock.now += 1
    service.verify(issue(service))  # issued after the revocation: fine


def test_rotation_keeps_old_tokens_valid_and_signs_with_the_new_key(
    tmp_path: Path, clock: Clock
) -> None:
    before = TokenService(
        load_or_create(tmp_path), issuer="ygg", audience="ygg-api", access_ttl_s=900, clock=clock
    )
    old_token = issue(before)
    old_kid, new_kid = rotate_signing_key(tmp_path)
    after = TokenService(
        load_or_create(tmp_path), issuer="ygg", audience="ygg-api", access_ttl_s=900, clock=clock
    )
    assert after.verify(old_token).user_id == "u_1"
    new_header, _, _ = parts(issue(after))
    assert new_header["kid"] == new_kid != old_kid
    assert {key["kid"] for key in after.jwks()["keys"]} == {old_kid, new_kid}
    assert all("d" not in key for key in after.jwks()["keys"])  # public halves only
    assert isinstance(load_or_create(tmp_path).signing_key, Ed25519PrivateKey)
