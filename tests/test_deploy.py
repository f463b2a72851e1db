"""The deployment files say what the server accepts: a cluster of several instances over one
PostgreSQL and one NATS, each setting a real one, nobody but the instances reaching NATS."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from yggdrasil import load_config

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
    load_config(environ=dict.fromkeys(names, "x") | {"YGG_BUS_URL": "nats://nats:4222"})
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
