"""The pages a browser visits: ``/``, which says what this server is and where to go, and
``/docs``, the interactive API reference (Swagger UI).

Everything these pages load is served by this application: operators' networks often have no
internet, so nothing may come from a CDN. The Swagger UI files are the npm package
``swagger-ui-dist`` (see ``api/static/swagger-ui/README.md``), shipped in this package with their
licence, and only the files named in :data:`ASSETS` are served. A Content-Security-Policy on both
pages keeps the browser from fetching anything elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from quart import Quart, Response, jsonify, render_template_string, request, url_for
from quart.helpers import send_file
from quart_schema import hide
from werkzeug.exceptions import NotFound

STATIC = Path(__file__).resolve().parent / "static"

ASSETS: dict[str, tuple[str, str]] = {
    "swagger-ui-bundle.js": ("swagger-ui/swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": ("swagger-ui/swagger-ui.css", "text/css"),
    "favicon-32x32.png": ("swagger-ui/favicon-32x32.png", "image/png"),
    "docs.js": ("docs.js", "text/javascript"),
}
"""The files ``/docs/assets/<name>`` serves: name -> (path under ``api/static``, media type;
text is sent as UTF-8)."""

_FRAME = "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
DOCS_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    f"img-src 'self' data:; font-src 'self' data:; connect-src 'self'; {_FRAME}"
)
"""Swagger UI sets inline styles; it runs no inline script and connects only to this server."""
HOME_POLICY = f"default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; {_FRAME}"

DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{{ title }} {{ version }}: HTTP API</title>
  <link rel="icon" type="image/png" href="{{ asset('favicon-32x32.png') }}">
  <link rel="stylesheet" href="{{ asset('swagger-ui.css') }}">
</head>
<body>
  <noscript>This page needs JavaScript. The OpenAPI document itself is at
    <a href="{{ openapi }}">{{ openapi }}</a>.</noscript>
  <div id="swagger-ui" data-openapi-url="{{ openapi }}"></div>
  <script src="{{ asset('swagger-ui-bundle.js') }}"></script>
  <script src="{{ asset('docs.js') }}"></script>
</body>
</html>
"""

HOME_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{{ title }} {{ version }}</title>
  <style>body { font-family: sans-serif; max-width: 40em; margin: 2em auto; }</style>
</head>
<body>
  <h1>{{ title }}</h1>
  <p>The relay and routing server of the Edda device network, version
    <code id="version">{{ version }}</code>.</p>
  <ul>
    <li><a href="{{ links.docs }}">{{ links.docs }}</a>: the HTTP API, to read and to try</li>
    <li><a href="{{ links.openapi }}">{{ links.openapi }}</a>: its OpenAPI document</li>
    <li><a href="{{ links.health }}">{{ links.health }}</a>: liveness,
      <a href="{{ links.ready }}">{{ links.ready }}</a>: readiness</li>
  </ul>
</body>
</html>
"""


def install(app: Quart, title: str, version: str) -> None:
    """Add ``GET /``, ``GET /docs`` and ``GET /docs/assets/<name>``, all public and left out of
    the OpenAPI document. ``/openapi.json`` must exist (quart-schema's ``openapi`` endpoint)."""

    def asset(name: str) -> str:
        return url_for("docs_asset", name=name)

    @app.get("/")
    @hide
    async def home() -> Response:
        """What this server is, its version and where its documents are; no tenant data."""
        links = {
            "docs": url_for("docs"),
            "openapi": url_for("openapi"),
            "health": url_for("healthz"),
            "ready": url_for("readyz"),
        }
        wanted = request.accept_mimetypes.best_match(["text/html", "application/json"])
        if wanted == "application/json":
            response = jsonify({"name": "yggdrasil", "version": version, **links})
        else:
            html = await render_template_string(
                HOME_PAGE, title=title, version=version, links=links
            )
            response = Response(html, content_type="text/html; charset=utf-8")
            response.headers["Content-Security-Policy"] = HOME_POLICY
        response.vary.add("Accept")
        return response

    @app.get("/docs")
    @hide
    async def docs() -> Response:
        """The API reference: Swagger UI on ``/openapi.json``, every file from this server."""
        html = await render_template_string(
            DOCS_PAGE, title=title, version=version, openapi=url_for("openapi"), asset=asset
        )
        response = Response(html, content_type="text/html; charset=utf-8")
        response.headers["Content-Security-Policy"] = DOCS_POLICY
        return response

    @app.get("/docs/assets/<name>")
    @hide
    async def docs_asset(name: str) -> Response:
        """One of :data:`ASSETS`; any other name is 404. Revalidated by its ETag (304)."""
        if name not in ASSETS:
            raise NotFound()
        path, media_type = ASSETS[name]
        response = await send_file(STATIC / path, mimetype=media_type, conditional=True)
        response.headers["Cache-Control"] = "no-cache"  # the ETag decides, not an age
        del response.headers["Expires"]
        return response
