"""The alert rules (deploy/prometheus/) and the Grafana dashboard (deploy/grafana/): Prometheus's
own promtool accepts them and their unit tests pass, and every metric they name is one a running
``yggdrasil serve`` really serves on its operator listener."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.cluster import cluster_env, cluster_processes, require_nats, unique_prefix
from tests.conftest import IN_CI, fresh_pg_database, require_postgres

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "yggdrasil.json"
SYNTHETIC = {"up"}
"""Series Prometheus makes itself for every target, not the server."""
METRIC = re.compile(r"\b(?:(?:yggdrasil|process|python)_[a-z0-9_]+|up)\b")


def promtool(*args: str, cwd: Path) -> None:
    """``promtool`` (Debian's prometheus package) with ``args`` succeeds; skipped without it,
    except in CI (.ci/run installs it)."""
    found = shutil.which("promtool")
    if found is None:
        if IN_CI:
            pytest.fail("promtool is not installed (CI=true)")
        pytest.skip("promtool is not installed")
    done = subprocess.run(
        [found, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in board["templating"]["list"]]
    return queries


def names_in(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in METRIC.findall(expr)}


def served_names(text: str) -> set[str]:
    """The series names in a Prometheus text exposition."""
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_the_rules_and_the_scrape_config_pass_promtool() -> None:
    promtool("check", "rules", "alerts.yml", cwd=RULES.parent)
    promtool("check", "config", "prometheus.yml", cwd=RULES.parent)


def test_the_rules_unit_tests_pass() -> None:
    promtool("test", "rules", "alerts.test.yml", cwd=RULES.parent)


def test_the_rules_cover_what_operations_need() -> None:
    names = {rule["alert"] for rule in rules()}
    assert {
        "YggdrasilInstanceDown",
        "YggdrasilNotReady",
        "YggdrasilHigh5xxRatio",
        "YggdrasilRelaySendQueueSaturated",
        "YggdrasilTurnRefusedPeersSpike",
        "YggdrasilAuthFailureSpike",
        "YggdrasilCrossNetworkProbing",
        "YggdrasilPayoutFailed",
    } <= names
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]
        assert names_in([rule["expr"]]), f"{rule['alert']} names no metric"
    # Every alert that fires is exercised by at least one unit test.
    tests = yaml.safe_load((RULES.parent / "alerts.test.yml").read_text())["tests"]
    tested = {case["alertname"] for t in tests for case in t["alert_rule_test"]}
    assert len(tested) >= 5


def test_the_metric_check_sees_a_missing_name() -> None:
    served = served_names("# HELP x y\nyggdrasil_ready 1.0\nup_not 2\n")
    assert served == {"yggdrasil_ready", "up_not"}
    assert names_in(["rate(yggdrasil_nonexistent_total[5m]) / up"]) - served == {
        "yggdrasil_nonexistent_total",
        "up",
    }


async def test_every_metric_in_the_rules_and_the_dashboard_is_served(
    data_dir: Path, asyncio_loop: None
) -> None:
    """Scraped from an instance as production runs it: ``yggdrasil serve`` on PostgreSQL with
    the NATS bus (the bus's series exist only in a cluster)."""
    expressions = [rule["expr"] for rule in rules()]
    in_rules = names_in(expressions)
    in_dashboard = names_in(dashboard_queries())
    assert len(in_rules) >= 12
    assert len(in_dashboard) >= 20
    require_postgres()
    bus_url = require_nats()
    async with fresh_pg_database() as database_url:
        with cluster_processes(
            data_dir,
            1,
            database_url=database_url,
            bus_url=bus_url,
            env=cluster_env(unique_prefix()),
        ) as [server]:
            async with httpx.AsyncClient(base_url=server.api_url, timeout=10) as http:
                # A request of each kind the histograms and counters need to have a series.
                assert (await http.get("/healthz")).status_code == 200
                assert (await http.get("/api/v1/users/me")).status_code == 401
            text = server.metrics()
    missing = (in_rules | in_dashboard) - SYNTHETIC - served_names(text)
    assert missing == set()
    assert "yggdrasil_ready 1.0" in text  # readiness is asked at each scrape
