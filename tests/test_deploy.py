"""The deployment files say what the server accepts: a cluster of several instances over one
PostgreSQL and one NATS, each setting a real one, nobody but the instances reaching NATS; every
port devices need published, metrics kept to operators, a health check that works, and a
systemd unit that systemd accepts."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from tests.servers import server_process
from yggdrasil import load_config
from yggdrasil.cli import _parser

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    return loaded


def kubernetes(name: str) -> list[dict[str, Any]]:
    text = (DEPLOY / "kubernetes" / name).read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, (kind, name)
    return found[0]


def test_compose_runs_three_instances_as_one_cluster() -> None:
    services = compose()["services"]
    instances = {name: s for name, s in services.items() if name.startswith("yggdrasil")}
    assert len(instances) == 3
    assert "-js" in services["nats"]["command"]  # the directory needs JetStream
    assert "nats" not in {p for s in services.values() for p in s.get("ports", [])}
    turn_ports, relay_ranges = set(), []
    for service in instances.values():
        env = {k: str(v) for k, v in service["environment"].items()}
        assert env["YGG_BUS_URL"] == "nats://nats:4222"
        assert env["YGG_DATABASE_URL"].startswith("postgresql://")
        assert "secrets:/var/lib/yggdrasil/secrets" in service["volumes"]  # one set of keys
        resolved = {k: re.sub(r"\$\{PUBLIC_IP[^}]*\}", "203.0.113.7", v) for k, v in env.items()}
        config = load_config(environ=resolved)  # every variable is a real setting
        turn_ports.add(config.turn.port)
        relay_ranges.append(range(config.turn.relay_port_min, config.turn.relay_port_max + 1))
        published = " ".join(service["ports"])
        assert f"{config.turn.port}:{config.turn.port}/udp" in published
        first, last = relay_ranges[-1][0], relay_ranges[-1][-1]
        assert f"{first}-{last}:{first}-{last}/udp" in published
    assert len(turn_ports) == 3  # each instance relays its own allocations
    for a in relay_ranges:
        for b in relay_ranges:
            assert a is b or not set(a) & set(b)


def test_the_load_balancer_reaches_every_instance_and_checks_readiness() -> None:
    config = (DEPLOY / "compose" / "haproxy.cfg").read_text()
    instances = [n for n in compose()["services"] if n.startswith("yggdrasil")]
    for port in ("8080", "8081"):
        for name in instances:
            assert re.search(rf"server \w+ {name}:{port} check", config), (name, port)
    assert config.count("option httpchk GET /readyz") == 2


def test_kubernetes_runs_several_instances_with_one_set_of_keys() -> None:
    docs = kubernetes("yggdrasil.yaml")
    deployment = by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    assert by_kind(docs, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    names = {e["name"] for e in container["env"]}
    assert {"YGG_DATABASE_URL", "YGG_BUS_URL", "YGG_SERVER_INSTANCE_ID"} <= names
    pod_config(container)  # every variable is a real setting
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    secrets = volumes[mounts["/var/lib/yggdrasil/secrets"]]
    assert secrets["secret"]["secretName"] == "yggdrasil-secrets"
    policy = by_kind(docs, "NetworkPolicy", "yggdrasil")
    egress = [rule for rule in policy["spec"]["egress"] if "to" in rule]
    reaches_nats = [
        rule
        for rule in egress
        if any(t.get("podSelector", {}).get("matchLabels") == {"app": "nats"} for t in rule["to"])
    ]
    assert reaches_nats
    assert reaches_nats[0]["ports"] == [{"port": 4222, "protocol": "TCP"}]


def test_only_the_instances_reach_nats() -> None:
    docs = kubernetes("nats.yaml")
    policy = by_kind(docs, "NetworkPolicy", "nats")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    sources = [source for rule in policy["spec"]["ingress"] for source in rule["from"]]
    assert sources == [{"podSelector": {"matchLabels": {"app": "yggdrasil"}}}]
    config = by_kind(docs, "Secret", "nats-auth")["stringData"]["nats.conf"]
    assert "jetstream" in config
    assert "authorization" in config


# ----------------------------------------------------------------- the container image


def dockerfile() -> dict[str, list[str]]:
    """The final stage's instructions: name -> arguments of each (continuations joined)."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    stages = re.split(r"^FROM ", text, flags=re.M)
    found: dict[str, list[str]] = {}
    for line in stages[-1].splitlines()[1:]:
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, rest = line.strip().partition(" ")
            found.setdefault(name.upper(), []).append(rest.strip())
    return found


def image_environment() -> dict[str, str]:
    return dict(re.findall(r"(YGG_\w+)=(\S+)", " ".join(dockerfile()["ENV"])))


def exposed(ports: list[str]) -> set[str]:
    """``8080/tcp``, ``3478/udp``, ``49152-49251/udp``: EXPOSE's or ``-p``'s container side."""
    return {p if "/" in p else f"{p}/tcp" for p in ports}


def image_ports() -> tuple[set[str], Any]:
    config = load_config(environ=image_environment())
    turn = config.turn
    wanted = {
        f"{config.api.port}/tcp",
        f"{config.gateway.port}/tcp",
        f"{turn.port}/udp",
        f"{turn.port}/tcp",
        f"{turn.tls_port}/tcp",
        f"{turn.relay_port_min}-{turn.relay_port_max}/udp",
    }
    return wanted, config


def healthcheck_code() -> str:
    (healthcheck,) = dockerfile()["HEALTHCHECK"]
    command = json.loads(healthcheck.partition("CMD")[2])
    assert command[0] == "/opt/yggdrasil/bin/python"  # the venv the build stage made
    assert command[1] == "-c"
    return str(command[2])


def test_the_image_exposes_what_devices_need_and_keeps_metrics_private() -> None:
    wanted, config = image_ports()
    assert config.server.host == "0.0.0.0"
    assert config.server.data_dir == "/var/lib/yggdrasil"
    assert config.turn.relay_port_max - config.turn.relay_port_min + 1 >= 50
    exposes = exposed(" ".join(dockerfile()["EXPOSE"]).split())
    assert exposes == wanted
    assert config.operator.host == "127.0.0.1"  # /metrics: not on the container's network
    assert not any(p.startswith(f"{config.operator.port}/") for p in exposes)
    assert dockerfile()["STOPSIGNAL"] == ["SIGTERM"]
    (healthcheck,) = dockerfile()["HEALTHCHECK"]
    assert "curl" not in healthcheck  # the slim image has neither
    assert "wget" not in healthcheck
    assert "/healthz" in healthcheck_code()


def test_the_image_healthcheck_tells_a_live_server_from_a_dead_one(tmp_path: Path) -> None:
    code = healthcheck_code()

    def check(api_port: int) -> int:
        env = {k: v for k, v in os.environ.items() if not k.startswith("YGG_")}
        env["YGG_API_PORT"] = str(api_port)
        return subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, timeout=30
        ).returncode

    with server_process(tmp_path / "data") as server:
        port = urlsplit(server.api_url).port
        assert port is not None
        assert check(port) == 0
        assert server.terminate() == 0
    assert check(port) != 0  # nothing listens there any more


def test_the_documented_docker_run_publishes_every_port_the_image_exposes() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "deployment.md").read_text()
    (command,) = [
        block.replace("\\\n", " ")
        for block in re.findall(r"```sh\n(.*?)```", text, re.S)
        if "docker run" in block
    ]
    published = re.findall(r"-p (\S+)", command)
    container_side = exposed([p.rsplit(":", 1)[-1] for p in published])
    wanted, _ = image_ports()
    assert wanted <= container_side
    for mapping in published:  # the same port outside as inside (TURN tells devices its own)
        host, container = mapping.rsplit(":", 1)[-2:]
        assert host == container.split("/")[0]
    variables = dict(re.findall(r"-e (YGG_\w+)=(\S+)", command))
    config = load_config(environ=image_environment() | variables)  # real settings
    assert config.turn.external_ip  # devices are told an address they can reach
    assert config.turn.public_host


# ----------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize("version", ["1.29.0", kubernetes_validate.latest_version()])
@pytest.mark.parametrize("name", ["yggdrasil.yaml", "nats.yaml"])
def test_the_kubernetes_manifests_are_valid_resources(name: str, version: str) -> None:
    for doc in kubernetes(name):
        kubernetes_validate.validate(doc, version, strict=True)


def pod_config(container: dict[str, Any]) -> Any:
    """The configuration a pod runs with: literal values as they are, Secrets as placeholders
    of the right shape."""
    placeholders = {
        "YGG_DATABASE_URL": "postgresql://u@db/y",
        "YGG_BUS_URL": "nats://nats:4222",
        "YGG_MAIL_SMTP_URL": "smtp+starttls://u:p@smtp.example.org:587",
    }
    environ = {
        e["name"]: e.get("value", placeholders.get(e["name"], "x")) for e in container["env"]
    }
    return load_config(environ=environ)


def test_kubernetes_ports_and_scraping_match_the_configuration() -> None:
    docs = kubernetes("yggdrasil.yaml")
    template = by_kind(docs, "Deployment")["spec"]["template"]
    container = template["spec"]["containers"][0]
    config = pod_config(container)
    assert template["spec"]["terminationGracePeriodSeconds"] > config.server.grace_s
    ports = {(p["name"], p["containerPort"], p.get("protocol", "TCP")) for p in container["ports"]}
    assert ports == {
        ("api", config.api.port, "TCP"),
        ("gateway", config.gateway.port, "TCP"),
        ("turn-udp", config.turn.port, "UDP"),
        ("turn-tcp", config.turn.port, "TCP"),
        ("metrics", config.operator.port, "TCP"),
    }
    assert config.operator.host == "0.0.0.0"  # Prometheus scrapes the pod's address
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(config.operator.port)
    assert annotations["prometheus.io/path"] == "/metrics"

    public = by_kind(docs, "Service", "yggdrasil")["spec"]["ports"]
    assert {p["targetPort"] for p in public} == {"api", "gateway"}  # never the metrics
    turn = by_kind(docs, "Service", "yggdrasil-turn")["spec"]
    assert {(p["port"], p["protocol"], p["targetPort"]) for p in turn["ports"]} == {
        (config.turn.port, "UDP", "turn-udp"),
        (config.turn.port, "TCP", "turn-tcp"),
    }
    assert turn["sessionAffinity"] == "ClientIP"  # an allocation lives on one pod

    ingress = by_kind(docs, "NetworkPolicy", "yggdrasil")["spec"]["ingress"]
    (anyone,) = [rule for rule in ingress if "from" not in rule]
    opened = {(p["port"], p.get("endPort"), p["protocol"]) for p in anyone["ports"]}
    assert opened == {
        (config.api.port, None, "TCP"),
        (config.gateway.port, None, "TCP"),
        (config.turn.port, None, "UDP"),
        (config.turn.port, None, "TCP"),
        (config.turn.relay_port_min, config.turn.relay_port_max, "UDP"),
    }
    (monitoring,) = [rule for rule in ingress if "from" in rule]
    assert monitoring["ports"] == [{"port": config.operator.port, "protocol": "TCP"}]
    assert monitoring["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


def test_kubernetes_pods_can_send_mail_and_reach_identity_providers() -> None:
    docs = kubernetes("yggdrasil.yaml")
    container = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    ref = env["YGG_MAIL_SMTP_URL"]["valueFrom"]["secretKeyRef"]
    secret = by_kind(docs, "Secret", ref["name"])["stringData"]
    assert secret[ref["key"]].startswith(("smtp://", "smtp+starttls://", "smtps://"))
    assert pod_config(container).mail.smtp_url
    egress = by_kind(docs, "NetworkPolicy", "yggdrasil")["spec"]["egress"]
    public_tcp = {
        port["port"]
        for rule in egress
        for port in rule.get("ports", [])
        if port.get("protocol") == "TCP"
        and any(
            "ipBlock" in to and to["ipBlock"]["cidr"] == "0.0.0.0/0" for to in rule.get("to", [])
        )
    }
    assert {587, 465, 25, 443} <= public_tcp
    for rule in egress:
        for to in rule.get("to", []):
            if "ipBlock" in to:  # never the cluster's own networks
                assert "10.0.0.0/8" in to["ipBlock"]["except"]


def test_compose_keeps_metrics_private() -> None:
    for service in compose()["services"].values():
        assert not any("9464" in str(p) for p in service.get("ports", []))
        assert "YGG_OPERATOR_HOST" not in service.get("environment", {})


# ----------------------------------------------------------------- systemd

UNIT = DEPLOY / "systemd" / "yggdrasil.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_the_systemd_unit_runs_a_hardened_server_on_its_state_directory() -> None:
    service = unit()["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/opt/yggdrasil/bin/yggdrasil"
    args = _parser().parse_args(argv[1:])  # flags the command line really has
    assert args.command == "serve"
    assert args.data_dir == "/var/lib/yggdrasil"
    config = load_config(args.config) if Path(args.config).exists() else None
    assert config is None  # /etc/yggdrasil is the host's; the example is beside the unit
    config = load_config(DEPLOY / "systemd" / "yggdrasil.toml")
    assert config.server.data_dir == "/var/lib/yggdrasil"
    assert config.operator.host == "127.0.0.1"

    assert service["User"] == "yggdrasil"  # its own, not root
    assert service["StateDirectory"] == "yggdrasil"  # /var/lib/yggdrasil, owned by the user
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > config.server.grace_s + 1
    assert float(service["TimeoutStopSec"]) > load_config().server.grace_s + 1
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # a configuration error stays down
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/var/lib/yggdrasil"
    assert service["PrivateTmp"] == "yes"
    ports = [config.api.port, config.gateway.port, config.turn.port, config.operator.port]
    assert min(ports) >= 1024
    assert service["AmbientCapabilities"] == ""  # nothing to bind below 1024
    assert service["CapabilityBoundingSet"] == ""


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify also checks that ExecStart's program exists: point it at this installation's.
    program = Path(sys.executable).parent / "yggdrasil"
    assert program.exists()
    copy = tmp_path / "yggdrasil.service"
    copy.write_text(UNIT.read_text().replace("/opt/yggdrasil/bin/yggdrasil", str(program)))
    verified = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert (verified.returncode, verified.stdout + verified.stderr) == (0, "")
    security = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=40", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert security.returncode == 0, security.stdout[-2000:]  # exposure at most 4.0 of 10
