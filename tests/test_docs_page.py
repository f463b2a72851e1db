"""``/docs`` works without internet and ``/`` says where to go.

The page is rendered in a real headless Chromium that can reach nothing but loopback; the test
records every request the page makes through the DevTools protocol and waits, without sleeping,
until Swagger UI has drawn the operations of our OpenAPI document.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from api._pages import ASSETS
from tests.conftest import IN_CI
from tests.servers import running_server
from yggdrasil import VERSION

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "api" / "static"


class References(HTMLParser):
    """Every ``src`` and ``href`` of an HTML document."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found += [value or "" for name, value in attrs if name in ("src", "href")]


def references(html: str) -> list[str]:
    parser = References()
    parser.feed(html)
    return parser.found


def is_local(reference: str, page_url: str) -> bool:
    """Whether ``reference``, resolved against ``page_url``, stays on the page's server."""
    resolved = urlsplit(urljoin(page_url, reference))
    return resolved.scheme == "data" or (
        resolved.scheme == urlsplit(page_url).scheme
        and resolved.netloc == urlsplit(page_url).netloc
    )


def test_is_local_sees_foreign_urls() -> None:
    page = "http://127.0.0.1:8080/docs"
    assert is_local("/docs/assets/x.js", page)
    assert is_local("#/operations", page)
    assert is_local("openapi.json", page)
    assert is_local("data:image/png;base64,AAAA", page)
    assert not is_local("https://cdnjs.cloudflare.com/ajax/libs/swagger-ui.js", page)
    assert not is_local("//cdn.example/x.css", page)
    assert not is_local("http://127.0.0.1:9999/x.js", page)


def test_the_assets_and_their_licence_ship_in_the_package() -> None:
    """An installed (not editable) package has every file /docs serves: pyproject's package
    data names them."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["api"]
    shipped = {
        p.relative_to(STATIC.parent).as_posix() for g in patterns for p in STATIC.parent.glob(g)
    }
    wanted = {f"static/{path}" for path, _ in ASSETS.values()}
    wanted |= {"static/swagger-ui/LICENSE", "static/swagger-ui/NOTICE"}
    assert wanted <= shipped
    for path in wanted:
        assert (STATIC.parent / path).stat().st_size > 0, path
    assert "Apache License" in (STATIC / "swagger-ui" / "LICENSE").read_text()


async def test_docs_page_and_its_assets_come_from_this_server(data_dir: Path) -> None:
    async with (
        running_server(data_dir) as running,
        httpx.AsyncClient(base_url=running.api_url) as http,
    ):
        docs = await http.get("/docs")
        assert docs.status_code == 200
        assert docs.headers["content-type"] == "text/html; charset=utf-8"
        assert docs.text.startswith("<!doctype html>")
        policy = docs.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "script-src 'self';" in policy
        assert "connect-src 'self';" in policy
        found = references(docs.text)
        assert {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"} <= set(found)
        for reference in found:
            assert reference.startswith("/"), reference
            assert not reference.startswith("//"), reference
            assert is_local(reference, f"{running.api_url}/docs")
            asset = await http.get(reference)
            assert asset.status_code == 200, reference
        bundle = await http.get("/docs/assets/swagger-ui-bundle.js")
        assert bundle.headers["content-type"] == "text/javascript; charset=utf-8"
        assert bundle.content == (STATIC / "swagger-ui" / "swagger-ui-bundle.js").read_bytes()
        assert bundle.headers["cache-control"] == "no-cache"
        again = await http.get(
            "/docs/assets/swagger-ui-bundle.js", headers={"If-None-Match": bundle.headers["etag"]}
        )
        assert again.status_code == 304
        assert again.content == b""
        css = await http.get("/docs/assets/swagger-ui.css")
        assert css.headers["content-type"] == "text/css; charset=utf-8"

        # Only the named files: nothing else under api/ is reachable.
        for name in ("LICENSE", "README.md", "..%2F_app.py", "..%2F..%2Fpyproject.toml", "nope"):
            missing = await http.get(f"/docs/assets/{name}")
            assert missing.status_code == 404, name
            assert missing.json() == {"error": {"code": "not_found", "message": "not found"}}

        # The pages are not part of the API's description.
        paths = (await http.get("/openapi.json")).json()["paths"]
        assert not {"/", "/docs", "/docs/assets/{name}"} & set(paths)


async def test_home_page_points_to_the_docs_and_health(data_dir: Path) -> None:
    async with (
        running_server(data_dir) as running,
        httpx.AsyncClient(base_url=running.api_url) as http,
    ):
        # A browser's Accept header; a bogus token is ignored (the page is public).
        browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        page = await http.get("/", headers={"Accept": browser, "Authorization": "Bearer nope"})
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "Accept" in page.headers["vary"]
        assert page.text.startswith("<!doctype html>")
        assert f'<code id="version">{VERSION}</code>' in page.text
        links = references(page.text)
        assert {"/docs", "/healthz", "/openapi.json", "/readyz"} <= set(links)
        for link in links:
            assert (await http.get(link)).status_code == 200, link
        assert "script" not in page.headers["content-security-policy"]
        assert (await http.get("/")).headers["content-type"].startswith("text/html")  # curl

        answer = await http.get("/", headers={"Accept": "application/json"})
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        assert answer.json() == {
            "name": "yggdrasil",
            "version": VERSION,
            "docs": "/docs",
            "openapi": "/openapi.json",
            "health": "/healthz",
            "ready": "/readyz",
        }
        assert (await http.post("/")).status_code == 405


# --- a real browser, offline -------------------------------------------------------------------


def chromium() -> str:
    """Chromium's path. Skipped without it, except in CI, where that is a failure."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is not None:
        return found
    if IN_CI:
        pytest.fail("chromium is not installed (CI=true): apt-get install chromium")
    pytest.skip("chromium is not installed")


# Names resolve to nothing, and anything but loopback (which Chromium never proxies) goes to a
# proxy nobody listens on (port 9, discard): the page gets no internet, and no test traffic
# leaves the machine.
OFFLINE = [
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",
]
_LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")


@asynccontextmanager
async def headless_chromium(profile: Path) -> AsyncIterator[str]:
    """A headless Chromium with the DevTools protocol on a free loopback port; yields the
    browser's DevTools URL. The browser is terminated on exit."""
    command = [
        chromium(),
        "--headless=new",
        "--no-sandbox",  # tests run as root
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        "--no-first-run",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        *OFFLINE,
        "about:blank",
    ]
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, command, stderr=subprocess.PIPE, check=False)
        )
        assert process.stderr is not None
        found, listening = trio.open_memory_channel[str](1)

        async def read_stderr() -> None:
            assert process.stderr is not None
            seen: bytes | None = b""
            async with found:
                # Drained to the end, so that the browser never blocks on a full pipe.
                async for chunk in process.stderr:
                    if seen is None:
                        continue
                    seen += chunk
                    match = _LISTENING.search(seen)
                    if match:
                        found.send_nowait(match.group(1).decode())
                        seen = None

        nursery.start_soon(read_stderr)
        with trio.fail_after(30):
            try:
                url = await listening.receive()
            except trio.EndOfChannel:
                pytest.fail("chromium exited before its DevTools port was open")
        try:
            yield url
        finally:
            nursery.cancel_scope.cancel()  # run_process terminates the browser


class DevTools:
    """The Chrome DevTools protocol over one websocket, one page session: commands in order,
    every event kept in :attr:`events`."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        self._waited = 0
        self.session: str | None = None

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        await self.ws.send_message(json.dumps(message))
        while True:
            received = await self._receive()
            if received.get("id") == self._next_id:
                if "error" in received:
                    raise AssertionError(f"{method}: {received['error']}")
                result: dict[str, Any] = received["result"]
                return result

    async def wait_for(self, method: str) -> dict[str, Any]:
        """The first ``method`` event since the last one waited for."""
        while True:
            for index in range(self._waited, len(self.events)):
                if self.events[index]["method"] == method:
                    self._waited = index + 1
                    params: dict[str, Any] = self.events[index]["params"]
                    return params
            await self._receive()

    async def _receive(self) -> dict[str, Any]:
        received: dict[str, Any] = json.loads(await self.ws.get_message())
        if "method" in received:
            self.events.append(received)
        return received

    def seen(self, method: str) -> list[dict[str, Any]]:
        return [event["params"] for event in self.events if event["method"] == method]


# Resolves once Swagger UI has drawn the operations (only its JavaScript creates these elements),
# or at once when Swagger UI did not load. Evaluated after the load event, when the scripts ran.
RENDERED = """
new Promise((resolve) => {
  if (typeof SwaggerUIBundle === "undefined") {  // the page has loaded: its scripts have run
    resolve({ missing: "SwaggerUIBundle did not load" });
    return;
  }
  const done = () => {
    const paths = [...document.querySelectorAll(".opblock .opblock-summary-path")]
      .map((e) => e.dataset.path);
    if (paths.length === 0) return false;
    resolve({
      doctype: document.doctype ? document.doctype.name : null,
      mode: document.compatMode,
      title: document.querySelector(".info .title")?.textContent ?? "",
      paths,
      references: [...document.querySelectorAll("[src], [href]")]
        .map((e) => e.getAttribute("src") ?? e.getAttribute("href")),
    });
    return true;
  };
  if (!done()) {
    new MutationObserver((_, observer) => done() && observer.disconnect())
      .observe(document, { childList: true, subtree: true });
  }
})
"""


@pytest.mark.slow
async def test_docs_render_offline_in_a_real_browser(data_dir: Path, tmp_path: Path) -> None:
    chromium()
    async with (
        running_server(data_dir) as running,
        headless_chromium(tmp_path / "profile") as browser_url,
        open_websocket_url(browser_url, max_message_size=16 * 1024 * 1024) as ws,
    ):
        devtools = DevTools(ws)
        page_url = f"{running.api_url}/docs"
        with trio.fail_after(60):
            target = await devtools.call("Target.createTarget", url="about:blank")
            attached = await devtools.call(
                "Target.attachToTarget", targetId=target["targetId"], flatten=True
            )
            devtools.session = attached["sessionId"]
            for domain in ("Network", "Page", "Runtime", "Log"):
                await devtools.call(f"{domain}.enable")
            await devtools.call("Page.navigate", url=page_url)
            await devtools.wait_for("Page.loadEventFired")
            evaluated = await devtools.call(
                "Runtime.evaluate", expression=RENDERED, awaitPromise=True, returnByValue=True
            )
        assert "exceptionDetails" not in evaluated, evaluated
        rendered = evaluated["result"]["value"]
        # The page asked nothing of anyone but this server...
        requested = [e["request"]["url"] for e in devtools.seen("Network.requestWillBeSent")]
        assert [url for url in requested if not is_local(url, page_url)] == []
        assert f"{running.api_url}/docs/assets/swagger-ui-bundle.js" in requested
        assert f"{running.api_url}/openapi.json" in requested
        assert devtools.seen("Network.loadingFailed") == []
        assert "missing" not in rendered, rendered

        # Standards mode, and the operations of our document drawn by Swagger UI.
        assert rendered["doctype"] == "html"
        assert rendered["mode"] == "CSS1Compat"
        assert "Yggdrasil" in rendered["title"]
        assert VERSION in rendered["title"]
        assert {"/api/v1/devices", "/api/v1/devices/{device_id}", "/healthz"} <= set(
            rendered["paths"]
        )
        # ...and nothing on the rendered page points elsewhere.
        foreign = [r for r in rendered["references"] if not is_local(r, page_url)]
        assert foreign == []
        # No script error, no refused resource (a Content-Security-Policy violation is logged).
        assert devtools.seen("Runtime.exceptionThrown") == []
        errors = [e for e in devtools.seen("Log.entryAdded") if e["entry"]["level"] == "error"]
        assert errors == []
        console = [e for e in devtools.seen("Runtime.consoleAPICalled") if e["type"] == "error"]
        assert console == []
