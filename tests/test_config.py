from __future__ import annotations

import re
from pathlib import Path

import aioice.ice
import pytest

from yggdrasil import ConfigError, load_config
from yggdrasil.cli import main
from yggdrasil.server import check
from yggdrasil.turn import own_addresses, turn_addresses


def test_defaults() -> None:
    config = load_config()
    assert (config.server.host, config.api.port, config.gateway.port, config.turn.port) == (
        "127.0.0.1",
        8080,
        8081,
        3478,
    )
    assert config.server.data_dir == "./yggdrasil-data"
    assert config.database.url == ""
    assert config.bus.url == ""


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "ygg.toml"
    path.write_text('[api]\nport = 9000\nmax_body_bytes = 10\n[server]\nhost = "0.0.0.0"\n')
    config = load_config(
        path,
        environ={"YGG_API_PORT": "9001", "YGG_SERVER_GRACE_S": "2.5", "HOME": "/root"},
        overrides={"api": {"port": 9002}},
    )
    assert config.api.port == 9002  # flag wins
    assert config.server.grace_s == 2.5  # environment
    assert config.server.host == "0.0.0.0"  # file
    assert config.api.max_body_bytes == 10


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[api]\nprot = 1\n", "[api] unknown key 'prot'"),
        ("[apii]\nport = 1\n", "unknown section [apii]"),
        ("[api]\nport = 70000\n", "[api] port: expected `int` <= 65535"),
        ('[api]\nport = "18240"\n', "[api] port: expected `int`, got `str`"),
        ('[server]\ngrace_s = "2"\n', "[server] grace_s: expected `float`, got `str`"),
        ('[gateway]\nwebrtc = "false"\n', "[gateway] webrtc: expected `bool`, got `str`"),
        ('[turn]\nallow_peers = "10.0.0.0/8"\n', "[turn] allow_peers: expected `array`"),
        ('[log]\nformat = "xml"\n', "[log] format: invalid enum value 'xml'"),
        (
            '[oidc.providers.g]\nissuer = "x"\nclient_id = 1\nredirect_uris = []\n',
            "[oidc.providers.g] client_id: expected `str`, got `int`",
        ),
        ("[api\n", "is not valid TOML"),
    ],
)
def test_bad_file_names_file_section_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.message.startswith(f"{path}: {message}") or (
        message == "is not valid TOML" and message in info.value.message
    )


def test_environment_values_are_text_converted_to_the_key_type() -> None:
    config = load_config(
        environ={
            "YGG_API_PORT": "18240",
            "YGG_SERVER_GRACE_S": "2.5",
            "YGG_GATEWAY_WEBRTC": "false",
            "YGG_LOG_FORMAT": "json",
        }
    )
    assert (config.api.port, config.server.grace_s) == (18240, 2.5)
    assert config.gateway.webrtc is False
    assert config.log.format == "json"
    with pytest.raises(ConfigError, match="YGG_API_PORT='eighty': expected `int`, got `str`"):
        load_config(environ={"YGG_API_PORT": "eighty"})
    with pytest.raises(ConfigError, match="YGG_API_PORT='70000': expected `int` <= 65535"):
        load_config(environ={"YGG_API_PORT": "70000"})


def test_flags_out_of_range_are_named() -> None:
    with pytest.raises(ConfigError, match=re.escape("invalid api.port: expected `int` <= 65535")):
        load_config(overrides={"api": {"port": 70000}})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"server": {"host": "999.1.1.1"}}, "server.host must be an IP address"),
        ({"server": {"host": "localhost"}}, "server.host must be an IP address"),
        ({"turn": {"allow_peers": ["10.0.0.0/33"]}}, "turn.allow_peers: '10.0.0.0/33'"),
        ({"api": {"trusted_proxies": ["proxy"]}}, "api.trusted_proxies: 'proxy'"),
        ({"turn": {"static_users": ["nopassword"]}}, "turn.static_users: the entry for user"),
        ({"turn": {"static_users": ["ops:"]}}, "the entry for user 'ops'"),
        ({"turn": {"static_users": [":secret"]}}, "the entry for user ''"),
    ],
)
def test_values_that_do_not_parse_are_refused(
    overrides: dict[str, dict[str, object]], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(overrides=overrides)
    assert "secret" not in info.value.message  # a password is never repeated


def test_good_values_pass() -> None:
    config = load_config(
        overrides={
            "server": {"host": "::"},
            "turn": {"allow_peers": ["10.0.0.1/8", "::1/128"], "static_users": ["a:b:c"]},
        }
    )
    assert config.turn.static_users == ["a:b:c"]


def test_unknown_environment_variable_is_named() -> None:
    with pytest.raises(ConfigError, match="YGG_API_PROT"):
        load_config(environ={"YGG_API_PROT": "1"})
    with pytest.raises(ConfigError, match="YGG_NOPE_X"):
        load_config(environ={"YGG_NOPE_X": "1"})


def test_config_is_frozen() -> None:
    config = load_config()
    with pytest.raises(AttributeError):
        config.api.port = 1  # type: ignore[misc]


def test_cli_rejects_bad_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("YGG_API_PROT", "1")
    assert main(["serve", "--data-dir", str(tmp_path)]) == 2
    assert "YGG_API_PROT" in capsys.readouterr().err


def test_cli_rejects_unsupported_bus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["serve", "--data-dir", str(tmp_path), "--bus-url", "nats://127.0.0.1:4222"]
    assert main(argv) == 2
    assert "bus.url needs database.url" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("yggdrasil ")


def test_migrate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from yggdrasil.store._migrations import available

    assert main(["migrate", "--data-dir", str(tmp_path)]) == 0
    assert f"applied {len(available())} migration(s)" in capsys.readouterr().out
    assert main(["migrate", "--data-dir", str(tmp_path)]) == 0
    assert "up to date" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("relay_ip", "::1"),
        ("relay_ip", "0.0.0.0"),
        ("relay_ip", "relay.example.org"),
        ("external_ip", "2001:db8::1"),
        ("relay_ip_v6", "127.0.0.1"),
        ("relay_ip_v6", "::"),
    ],
)
def test_turn_addresses_must_be_specific_addresses_of_their_family(key: str, value: str) -> None:
    config = load_config(overrides={"turn": {key: value}})
    with pytest.raises(ConfigError, match=f"turn.{key}"):
        check(config)


def test_a_wildcard_host_never_becomes_an_advertised_address() -> None:
    config = load_config(overrides={"server": {"host": "0.0.0.0"}})
    relay, advertised, public = turn_addresses(config.turn, config.server.host)
    assert relay not in ("0.0.0.0", "")
    assert advertised == relay
    assert public == relay
    config = load_config(
        overrides={"server": {"host": "0.0.0.0"}, "turn": {"external_ip": "203.0.113.5"}}
    )
    assert turn_addresses(config.turn, config.server.host)[1:] == ("203.0.113.5", "203.0.113.5")
    config = load_config(overrides={"turn": {"public_host": "turn.example.org"}})
    assert turn_addresses(config.turn, config.server.host) == (
        "127.0.0.1",
        "127.0.0.1",
        "turn.example.org",
    )


def test_relays_know_every_address_of_the_server_as_its_own() -> None:
    config = load_config(
        overrides={
            "server": {"host": "0.0.0.0"},
            "turn": {"external_ip": "203.0.113.5", "relay_ip_v6": "2001:db8::5"},
        }
    )
    relay, advertised, public = turn_addresses(config.turn, config.server.host)
    own = own_addresses(
        config.turn, config.server.host, relay, advertised, public, "turn.example.org"
    )
    assert {relay, "203.0.113.5", "2001:db8::5"} <= own
    assert set(aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True)) <= own
    assert "turn.example.org" not in own


def test_list_settings_from_the_environment() -> None:
    config = load_config(
        environ={
            "YGG_API_TRUSTED_PROXIES": '["172.16.0.0/12", "10.0.0.0/8"]',
            "YGG_TURN_ALLOW_PEERS": "127.0.0.0/8, ::1/128",
        }
    )
    assert config.api.trusted_proxies == ["172.16.0.0/12", "10.0.0.0/8"]
    assert config.turn.allow_peers == ["127.0.0.0/8", "::1/128"]
    with pytest.raises(ConfigError, match="YGG_API_TRUSTED_PROXIES is not a JSON array"):
        load_config(environ={"YGG_API_TRUSTED_PROXIES": "[oops"})
