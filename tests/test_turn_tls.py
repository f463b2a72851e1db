"""TURN over TLS: certificates checked at start-up and renewed while the server runs; aioice (a
real ICE agent) relaying through Yggdrasil over TURN-over-TLS and TURN-over-TCP, with the URLs
and the ephemeral credentials a device gets from the API."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioice
import httpx
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from benchmarks._harness import free_port, yggdrasil_command
from relay.client._direct import _agent
from stun_turn import Attr, Class, Message, Method, decode, encode, unpack_xor_address
from tests.clients import device, sign_in
from tests.servers import ServerProcess, server_process
from yggdrasil import ConfigError
from yggdrasil.turn._tls import ReloadingContext, check_tls

# ----------------------------------------------------------------- certificates


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass
class Leaf:
    cert_pem: bytes
    key_pem: bytes
    der: bytes


class Authority:
    """A certificate authority of its own, as a test's trust anchor (``pem``)."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        public = self.key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name("Yggdrasil test CA"))
            .issuer_name(_name("Yggdrasil test CA"))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str) -> Leaf:
        """A server certificate for ``localhost`` and ``127.0.0.1``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return Leaf(
            cert.public_bytes(serialization.Encoding.PEM),
            key_pem,
            cert.public_bytes(serialization.Encoding.DER),
        )


def replace(path: Path, data: bytes) -> None:
    """Write a new version of ``path`` the way renewal tools do: a new file renamed over it."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_bytes(data)
    os.replace(fresh, path)


def install(leaf: Leaf, cert_file: Path, key_file: Path) -> None:
    replace(key_file, leaf.key_pem)
    replace(cert_file, leaf.cert_pem)


@dataclass
class TlsFiles:
    authority: Authority
    leaf: Leaf
    cert_file: Path
    key_file: Path
    ca_file: Path


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    authority = Authority()
    leaf = authority.issue("first")
    files = TlsFiles(
        authority, leaf, tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    )
    install(leaf, files.cert_file, files.key_file)
    files.ca_file.write_bytes(authority.pem)
    return files


def served_certificate(context: ssl.SSLContext, ca_pem: bytes) -> bytes:
    """The certificate a server with ``context`` presents, from a handshake in memory (and
    verified against ``ca_pem`` for ``localhost``)."""
    client_context = ssl.create_default_context(cadata=ca_pem.decode())
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(to_client, to_server, server_hostname="localhost")
    server = context.wrap_bio(server_in, server_out, server_side=True)
    done: set[ssl.SSLObject] = set()
    for _ in range(10):
        for side in (client, server):
            with suppress(ssl.SSLWantReadError):
                side.do_handshake()
                done.add(side)
        server_in.write(to_server.read())
        to_client.write(server_out.read())
        if client in done:
            certificate = client.getpeercert(binary_form=True)
            assert certificate is not None
            return certificate
    raise AssertionError("no handshake")


# ----------------------------------------------------------------- checks and reloads


def test_a_changed_certificate_is_loaded_and_a_broken_one_is_not(tls_files: TlsFiles) -> None:
    reloading = ReloadingContext(str(tls_files.cert_file), str(tls_files.key_file))
    first = reloading()
    assert reloading() is first  # the files did not change: the same context
    assert served_certificate(first, tls_files.authority.pem) == tls_files.leaf.der

    replace(tls_files.cert_file, b"-----BEGIN CERTIFICATE-----\ngarbage\n")
    assert reloading() is first  # a broken file: the previous certificate stays in use
    second = tls_files.authority.issue("second")
    replace(tls_files.cert_file, second.cert_pem)
    assert reloading() is first  # the new certificate with the old key: still the previous one
    assert reloading.reloads == 0
    replace(tls_files.key_file, second.key_pem)
    renewed = reloading()
    assert renewed is not first
    assert reloading.reloads == 1
    assert served_certificate(renewed, tls_files.authority.pem) == second.der
    assert served_certificate(first, tls_files.authority.pem) == tls_files.leaf.der


def test_tls_files_are_checked_before_anything_starts(tls_files: TlsFiles, tmp_path: Path) -> None:
    check_tls("", "")
    check_tls(str(tls_files.cert_file), str(tls_files.key_file))
    other = Authority().issue("other")
    mismatched = tmp_path / "other-key.pem"
    mismatched.write_bytes(other.key_pem)
    cases = {
        (str(tls_files.cert_file), ""): "must be set together",
        (str(tmp_path / "missing.pem"), str(tls_files.key_file)): "missing.pem: No such file",
        (str(tls_files.cert_file), str(tls_files.ca_file)): "cannot be loaded",
        (str(tls_files.cert_file), str(mismatched)): "key values mismatch",
    }
    for (cert, key), message in cases.items():
        with pytest.raises(ConfigError, match=message):
            check_tls(cert, key)


@pytest.mark.slow
def test_serve_refuses_tls_files_that_do_not_load_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    result = subprocess.run(
        [*yggdrasil_command(), "serve", "--data-dir", str(tmp_path / "data"), "--api-port", "0"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("YGG_")},
            "YGG_TURN_TLS_CERT_FILE": str(missing),
            "YGG_TURN_TLS_KEY_FILE": str(missing),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"turn.tls_cert_file {missing}: No such file or directory" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def tls_connect(port: int, ca_pem: bytes) -> ssl.SSLSocket:
    """A verified TLS connection to ``127.0.0.1:port``."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def binding(connection: ssl.SSLSocket, n: int) -> tuple[str, int]:
    """A STUN Binding over the connection; the address the server saw."""
    transaction = n.to_bytes(12, "big")
    connection.sendall(encode(Message(Method.BINDING, Class.REQUEST, transaction, [])))
    data = b""
    while len(data) < 20 or len(data) < 20 + int.from_bytes(data[2:4], "big"):
        chunk = connection.recv(4096)
        assert chunk, "connection closed"
        data += chunk
    answer = decode(data)
    assert answer.cls == Class.SUCCESS
    assert answer.transaction_id == transaction
    mapped = answer.get(Attr.XOR_MAPPED_ADDRESS)
    assert mapped is not None
    return unpack_xor_address(mapped, transaction)


@contextmanager
def tls_server(
    tmp_path: Path, files: TlsFiles, *, env: dict[str, str] | None = None
) -> Iterator[tuple[ServerProcess, int, int]]:
    """``yggdrasil serve`` with TURN over TLS and a static user; the server, its TURN port and
    its TLS port."""
    turn_port, tls_port = free_port(), free_port()
    with server_process(
        tmp_path / "data",
        "--turn-port",
        str(turn_port),
        "--turn-static-user",
        "bench:secret",
        "--turn-allow-peer",
        "127.0.0.0/8",
        env={
            "YGG_TURN_TLS_PORT": str(tls_port),
            "YGG_TURN_TLS_CERT_FILE": str(files.cert_file),
            "YGG_TURN_TLS_KEY_FILE": str(files.key_file),
            **(env or {}),
        },
    ) as server:
        yield server, turn_port, tls_port


@pytest.mark.slow
def test_a_renewed_certificate_reaches_new_connections_without_a_restart(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    with tls_server(tmp_path, tls_files) as (server, _, tls_port):
        old = tls_connect(tls_port, tls_files.authority.pem)
        assert old.getpeercert(binary_form=True) == tls_files.leaf.der
        seen = binding(old, 1)
        assert seen == old.getsockname()[:2]

        renewed = tls_files.authority.issue("renewed")
        install(renewed, tls_files.cert_file, tls_files.key_file)
        new = tls_connect(tls_port, tls_files.authority.pem)
        assert new.getpeercert(binary_form=True) == renewed.der
        assert binding(new, 2) == new.getsockname()[:2]
        # The connection made before keeps its session and its certificate.
        assert binding(old, 3) == seen
        assert old.getpeercert(binary_form=True) == tls_files.leaf.der
        old.close()
        new.close()
        assert server.process.poll() is None  # the same process all along
        assert any("TLS certificate reloaded" in str(e.get("msg")) for e in server.log())
        assert server.terminate() == 0


# ----------------------------------------------------------------- aioice over TCP and TLS


def run(coroutine: Any) -> Any:
    # A plain asyncio loop: trio-asyncio's event loop policy would hand out its own loop here.
    loop = asyncio.SelectorEventLoop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def ice_servers_of_a_device(server: ServerProcess, data_dir: Path) -> list[dict[str, Any]]:
    async def fetch() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=server.api_url) as http:
            dev = await sign_in(
                http, data_dir / "outbox", "tls@example.org", device_body=device("cam")
            )
            response = await dev.get("/api/v1/devices/cam/ice-servers")
            assert response.status_code == 200, response.text
            found: list[dict[str, Any]] = response.json()["ice_servers"]
            return found

    return trio.run(fetch)


async def relay_between(left: aioice.Connection, right: aioice.Connection) -> tuple[bytes, bytes]:
    """Gather relay candidates on both agents, connect them and send both ways."""
    try:
        await asyncio.gather(left.gather_candidates(), right.gather_candidates())
        for agent in (left, right):
            kinds = [candidate.type for candidate in agent.local_candidates]
            assert kinds, "no candidate"
            assert set(kinds) == {"relay"}, kinds
        for candidate in left.local_candidates:
            await right.add_remote_candidate(candidate)
        for candidate in right.local_candidates:
            await left.add_remote_candidate(candidate)
        await left.add_remote_candidate(None)
        await right.add_remote_candidate(None)
        left.remote_username, left.remote_password = right.local_username, right.local_password
        right.remote_username, right.remote_password = left.local_username, left.local_password
        await asyncio.wait_for(asyncio.gather(left.connect(), right.connect()), 20)
        await left.send(b"through yggdrasil")
        got_right = await asyncio.wait_for(right.recv(), 5)
        await right.send(b"and back")
        got_left = await asyncio.wait_for(left.recv(), 5)
    finally:
        await asyncio.gather(left.close(), right.close())
    return got_right, got_left


@pytest.mark.slow
def test_aioice_relays_over_turn_over_tls_and_over_tcp(
    tmp_path: Path, tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One relay-only agent reaches Yggdrasil over TLS (certificate verified as a device's
    would be, against its trust store), the other over TCP; data passes both ways."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files.ca_file))
    with tls_server(tmp_path, tls_files) as (server, turn_port, tls_port):

        def agent(port: int, *, controlling: bool, tls: bool) -> aioice.Connection:
            return aioice.Connection(
                ice_controlling=controlling,
                turn_server=("127.0.0.1", port),
                turn_username="bench",
                turn_password="secret",
                turn_ssl=tls,
                turn_transport="tcp",
                use_ipv6=False,
                transport_policy=aioice.TransportPolicy.RELAY,
            )

        left = agent(tls_port, controlling=True, tls=True)
        right = agent(turn_port, controlling=False, tls=False)
        assert run(relay_between(left, right)) == (b"through yggdrasil", b"and back")
        assert server.terminate() == 0


@pytest.mark.slow
def test_a_device_gets_udp_tcp_and_tls_urls_and_each_relays(
    tmp_path: Path, tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ICE servers the API hands a device offer TURN over UDP, TCP and TLS; the device
    client picks UDP first, and with only one of the others offered, that one; each relays with
    the device's ephemeral credentials."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files.ca_file))
    with tls_server(tmp_path, tls_files) as (server, turn_port, tls_port):
        servers = ice_servers_of_a_device(server, tmp_path / "data")
        assert servers[0]["urls"] == [f"stun:127.0.0.1:{turn_port}"]
        turn = servers[1]
        assert turn["urls"] == [
            f"turn:127.0.0.1:{turn_port}?transport=udp",
            f"turn:127.0.0.1:{turn_port}?transport=tcp",
            f"turns:127.0.0.1:{tls_port}?transport=tcp",
        ]
        chosen = _agent(servers, controlling=True, relay_only=True)
        assert (chosen.turn_server, chosen.turn_transport, chosen.turn_ssl) == (
            ("127.0.0.1", turn_port),
            "udp",
            False,
        )

        def only(url: str, controlling: bool) -> aioice.Connection:
            offered = [{**turn, "urls": [url]}]
            return _agent(offered, controlling=controlling, relay_only=True)

        left = only(turn["urls"][2], True)
        right = only(turn["urls"][1], False)
        assert (left.turn_server, left.turn_transport, left.turn_ssl) == (
            ("127.0.0.1", tls_port),
            "tcp",
            True,
        )
        assert (right.turn_transport, right.turn_ssl) == ("tcp", False)
        assert run(relay_between(left, right)) == (b"through yggdrasil", b"and back")
        assert server.terminate() == 0


@pytest.mark.slow
def test_an_advertised_tls_port_is_offered_instead_of_the_bound_one(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    """Behind a TCP load balancer on 443, devices are told 443 (``turn.tls_public_port``) and
    ``turn.public_host``, the name on the certificate."""
    env = {"YGG_TURN_TLS_PUBLIC_PORT": "443", "YGG_TURN_PUBLIC_HOST": "turn.example.org"}
    with tls_server(tmp_path, tls_files, env=env) as (server, turn_port, _):
        urls = ice_servers_of_a_device(server, tmp_path / "data")[1]["urls"]
        assert urls == [
            f"turn:turn.example.org:{turn_port}?transport=udp",
            f"turn:turn.example.org:{turn_port}?transport=tcp",
            "turns:turn.example.org:443?transport=tcp",
        ]
