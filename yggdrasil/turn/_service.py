"""This instance's STUN/TURN service, and the ``turn`` child of the supervision tree that runs
it."""

from __future__ import annotations

import logging
from typing import Any

import trio

from actors import ChildSpec
from stun_turn import PeerPolicy, TurnCore, TurnListener, TurnSettings, TurnStats, canonical

from .._config import TurnConfig
from ._addresses import own_addresses, turn_addresses
from ._credentials import issue_credentials, key_lookup, owner_lookup
from ._tls import ReloadingContext

log = logging.getLogger(__name__)


class TurnService:
    """What the rest of the instance asks of TURN, and what the ``turn`` child runs.

    Built once per instance from the configuration: the addresses (:func:`turn_addresses`), the
    peer policy that the relays and the gateway's WebRTC agent both obey (``peers``, where the
    gateway also registers the server's own WebRTC endpoints), and the secret of the ephemeral
    credentials. Each run of the child binds a fresh :class:`TurnListener`; ``listener`` is the
    latest one, ``None`` before the first run. With a certificate and key configured, ``tls`` is
    the TLS context of new connections, reloaded when the files change (raises
    :class:`ConfigError` here if they do not load).
    """

    def __init__(self, config: TurnConfig, *, host: str, secret: bytes) -> None:
        """``host``: the address every listener of the server binds to (``server.host``)."""
        self.config = config
        self.host = host
        self.secret = secret
        self.addresses = turn_addresses(config, host)
        relay, advertised, public = self.addresses
        self.peers = PeerPolicy(
            own=own_addresses(config, host, relay, advertised, public), allow=config.allow_peers
        )
        self.relay_aliases = {advertised: relay} if advertised != relay else {}
        """The public address of the relays -> the one they bind to, for the server's own ICE
        checks toward them."""
        self._relays = {canonical(a) for a in (relay, advertised, config.relay_ip_v6) if a}
        self.tls: ReloadingContext | None = None
        if config.tls_cert_file and config.tls_key_file:
            self.tls = ReloadingContext(config.tls_cert_file, config.tls_key_file)
        self.listener: TurnListener | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where STUN and TURN listen: the bound address once the child runs, else the
        configured one."""
        if self.listener is not None:
            return self.listener.address
        return self.host, self.config.port

    @property
    def tls_address(self) -> tuple[str, int] | None:
        """Where TURN over TLS listens (bound, or configured before the child runs); ``None``
        without a certificate."""
        if self.tls is None:
            return None
        if self.listener is not None and self.listener.tls_address is not None:
            return self.listener.tls_address
        return self.host, self.config.tls_port

    def stats(self) -> TurnStats | None:
        """The counters of the running TURN core, for the metrics."""
        core = None if self.listener is None else self.listener.core
        return None if core is None else core.stats

    def turn_urls(self) -> list[str]:
        """The TURN URLs devices are given, in the order to try them (RFC 7065): UDP, TCP on the
        same port, and TLS (``turns:``) with a certificate, on ``tls_public_port`` if set (a load
        balancer or port forward on 443, say), else on the bound ``tls_port``. All name
        ``public_host``, which is the name the certificate must carry."""
        where = _host_port(self.addresses.public, self.address[1])
        urls = [f"turn:{where}?transport=udp", f"turn:{where}?transport=tcp"]
        tls = self.tls_address
        if tls is not None:
            port = self.config.tls_public_port or tls[1]
            urls.append(f"turns:{_host_port(self.addresses.public, port)}?transport=tcp")
        return urls

    def ice_servers(self, user_id: str, network_id: str, device_id: str) -> dict[str, Any]:
        """The ICE-server JSON for one device of an account: the STUN and TURN URLs, and fresh
        ephemeral credentials for that device."""
        where = _host_port(self.addresses.public, self.address[1])
        credentials = issue_credentials(
            self.secret, f"{user_id}/{network_id}/{device_id}", self.config.credential_ttl_s
        )
        return {
            "ice_servers": [
                {"urls": [f"stun:{where}"]},
                {
                    "urls": self.turn_urls(),
                    "username": credentials.username,
                    "credential": credentials.password,
                },
            ],
            "ttl_s": credentials.ttl_s,
        }

    def ice_peer_allowed(self, address: str) -> bool:
        """Where the server's WebRTC ICE agent may send checks: where a relay may, and to its
        own TURN relays (a device's relay candidates)."""
        try:
            return canonical(address) in self._relays or self.peers.allowed(address)
        except ValueError:
            return False

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind a listener and serve STUN/TURN on it until cancelled (every socket closes)."""
        config = self.config
        relay, advertised, _ = self.addresses
        listener = TurnListener(
            self.host,
            config.port,
            relay,
            range(config.relay_port_min, config.relay_port_max + 1),
            relay_host_v6=config.relay_ip_v6,
            external_ip=advertised,
            tls_port=config.tls_port,
            ssl_context=self.tls,
        )
        core = TurnCore(
            TurnSettings(
                realm=config.realm,
                default_lifetime_s=config.default_lifetime_s,
                max_lifetime_s=config.max_lifetime_s,
                max_allocations=config.max_allocations,
                max_allocations_per_user=config.max_allocations_per_user,
                max_allocations_per_device=config.max_allocations_per_device,
                unauthenticated_answers_per_s=config.unauthenticated_answers_per_s,
                allocation_bytes_per_s=config.allocation_bytes_per_s,
            ),
            secret=self.secret,
            key_for=key_lookup(config, self.secret),
            open_relay=listener.open_relay,
            peer_allowed=self.peers.allowed,
            service=self.peers.service,
            owner_of=owner_lookup(config),
            relay_families=listener.relay_families,
        )
        self.listener = listener

        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(listener.serve, core)
            url = f"turn:{host}:{port}"
            log.info("turn listening on %s (udp, tcp)", url, extra={"listener": "turn", "url": url})
            if listener.tls_address is not None:
                tls_host, tls_port = listener.tls_address
                tls_url = f"turns:{tls_host}:{tls_port}"
                log.info(
                    "turn listening on %s (tls)",
                    tls_url,
                    extra={"listener": "turns", "url": tls_url},
                )
            task_status.started()


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def turn_child(turn: TurnService) -> ChildSpec:
    """The ``turn`` child: STUN and TURN over UDP and TCP (and TLS with a certificate)."""
    return ChildSpec("turn", turn.serve, shutdown_s=1.0)
