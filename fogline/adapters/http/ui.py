"""The dashboard page's static files, on a master's REST status server.

- ``GET /``: 302 to ``/ui/``.
- ``GET /ui/``: the page (``index.html``).
- ``GET /ui/<name>``, ``GET /ui/vendor/<name>``: its scripts, styles and vendored chart library.

Only the files found in the package's ``ui`` directory when this module is imported are served: a request
names a key of that allowlist, never a path, so nothing else on disk can be reached (``..`` included);
anything else is 404. Every answer carries ``Cache-Control: no-cache`` and the security headers below; the
page needs no inline script or style, no other origin and no frame. Read-only: GET and HEAD only::

    app = create_app(source, metrics)
    add_ui_routes(app)
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

UI_PACKAGE = "fogline.servers"
"""The package holding the ``ui`` directory. NOTE: named, not imported: the adapters layer may not import it."""

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".md": "text/markdown; charset=utf-8",
}
DEFAULT_CONTENT_TYPE = "text/plain; charset=utf-8"  # LICENSE


class StaticFile:
    """One file of the page: its bytes (read once, at import) and its Content-Type."""

    def __init__(self, name: str, body: bytes) -> None:
        self.body = body
        self.content_type = CONTENT_TYPES.get(_suffix(name), DEFAULT_CONTENT_TYPE)


def _suffix(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def _files_in(folder: Traversable, prefix: str) -> dict[str, StaticFile]:
    if not folder.is_dir():
        return {}
    return {prefix + entry.name: StaticFile(entry.name, entry.read_bytes())
            for entry in folder.iterdir() if entry.is_file()}


def _load_files() -> dict[str, StaticFile]:
    root = resources.files(UI_PACKAGE) / "ui"
    return {**_files_in(root, ""), **_files_in(root / "vendor", "vendor/")}


UI_FILES = _load_files()
"""The allowlist: the page's files by their name under ``/ui/`` (``dashboard.js``, ``vendor/uPlot.min.css``)."""


def add_ui_routes(app: web.Application) -> None:
    """Serve the dashboard page on ``app``: ``/`` redirects to ``/ui/``, which serves the files of
    :data:`UI_FILES`, and 404 for any other name under ``/ui/``."""
    app.router.add_get("/", _redirect_to_page)
    app.router.add_get("/ui/", _page)
    app.router.add_get("/ui/{name}", _file)
    app.router.add_get("/ui/vendor/{name}", _vendored_file)


async def _redirect_to_page(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/", headers=SECURITY_HEADERS)


async def _page(request: web.Request) -> web.Response:
    return _serve("index.html")


async def _file(request: web.Request) -> web.Response:
    return _serve(request.match_info["name"])


async def _vendored_file(request: web.Request) -> web.Response:
    return _serve("vendor/" + request.match_info["name"])


def _serve(name: str) -> web.Response:
    found = UI_FILES.get(name)
    if found is None:
        return web.Response(status=404, text="not found", headers=SECURITY_HEADERS)
    return web.Response(body=found.body, headers={**SECURITY_HEADERS, "Content-Type": found.content_type})
