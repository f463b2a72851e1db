"""schemathesis against ``yggdrasil serve``: no 5xx, and every answer matches the OpenAPI document.

Requests are signed in as a real user so that the authenticated routes get past 401.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.clients import sign_in
from tests.servers import server_process

pytestmark = pytest.mark.slow

RELAXED = {
    f"YGG_LIMITS_{name}": "100000"
    for name in (
        "PER_CLIENT_RATE",
        "PER_CLIENT_BURST",
        "PER_PRINCIPAL_RATE",
        "PER_PRINCIPAL_BURST",
        "AUTH_PER_CLIENT_RATE",
        "AUTH_PER_CLIENT_BURST",
    )
}
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)


def schemathesis() -> str:
    found = Path(sys.executable).with_name("st")
    if found.exists():
        return str(found)
    located = shutil.which("st")
    if located is None:
        pytest.fail("schemathesis is not installed; install the test extra")
    return located


def walk_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        refs = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return refs + [ref for value in node.values() for ref in walk_refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in walk_refs(value)]
    return []


def test_the_api_survives_schemathesis(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with server_process(data_dir, env=RELAXED) as server:
        spec = httpx.get(f"{server.api_url}/openapi.json").json()
        refs = walk_refs(spec)
        assert refs, "the document uses components"
        for ref in refs:
            name = ref.removeprefix("#/components/schemas/")
            assert name in spec["components"]["schemas"], f"unresolved {ref}"

        async def token() -> str:
            async with httpx.AsyncClient(base_url=server.api_url) as http:
                user = await sign_in(http, data_dir / "outbox", "fuzzer@example.org")
            return str(user.session["access_token"])

        access = trio.run(token)
        result = subprocess.run(
            [
                schemathesis(),
                "run",
                f"{server.api_url}/openapi.json",
                "--checks",
                CHECKS,
                "--max-examples",
                "25",
                "--seed",
                "1",
                "--request-timeout",
                "10",
                "-H",
                f"Authorization: Bearer {access}",
                # These two would end the session the rest of the run signs in with.
                "--exclude-operation-id",
                "delete_delete_me",
                "--exclude-operation-id",
                "post_logout",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            cwd=tmp_path,  # its cache (.schemathesis/) stays out of the checkout
        )
        failures = result.stdout[result.stdout.find("FAILURES") :]
        assert result.returncode == 0, failures[:8000] + result.stderr[-2000:]
        errors = [e for e in server.log() if e.get("level") == "error"]
        assert errors == []
