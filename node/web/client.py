"""The web client: the node serves it at `/` from `node/web/static/` (plain ES modules and
CSS, no build step), with a Content-Security-Policy computed per request.

The chat socket listens on its own port, so `connect-src` names its origin, which depends
on the host the browser used to reach the node (`Node.ws_url_for`); in a cluster it also
names the other members (the page moves to one when its node is gone, node/web/cors.py).
"""

from __future__ import annotations

import hashlib
import mimetypes
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from quart import Response, request
from werkzeug.security import safe_join

from ..core.errors import ChatError
from .cors import origin_of, peer_origins

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from ..app import Node

STATIC_DIR = Path(__file__).parent / "static"

#: Types the client's files need, whatever the system's mime database says.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
}

#: Headers on every response of the node (set only where a route did not set its own).
COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def content_security_policy(node: Node, host: str, scheme: str) -> str:
    """The CSP of the client's page: everything from this origin, the chat socket, and
    `blob:` for local previews of files about to be sent. In a cluster also the other
    members' APIs and media, and their chat sockets (on any port of their hosts: a member
    announces its HTTP URL only), where the page goes when its own node is gone."""
    sources = ["'self'"]
    ws_origin = origin_of(node.ws_url_for(host, scheme))
    if ws_origin:
        sources.append(ws_origin)
    media = ["'self'", "blob:"]
    public = origin_of(node.config.http.public_url)
    if public:  # signed media URLs may name the public address
        media.append(public)
    for peer in sorted(peer_origins(node) - {origin_of(f"{scheme}://{host}"), public}):
        parts = urlsplit(peer)
        name = parts.hostname or ""
        peer_host = f"[{name}]" if ":" in name else name
        sources += [peer, f"{'wss' if parts.scheme == 'https' else 'ws'}://{peer_host}:*"]
        media.append(peer)
    sources, media = list(dict.fromkeys(sources)), list(dict.fromkeys(media))
    return "; ".join([
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        f"img-src {' '.join(media)}",
        f"media-src {' '.join(media)}",
        f"connect-src {' '.join(sources)}",
        "worker-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])


#: The CSP of the service worker (sw.js), which fetches nothing: it only shows notifications.
SERVICE_WORKER_CSP = "default-src 'none'"


class StaticFiles:
    """Reads files under a folder, with a content hash for ETags, cached by mtime and size."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, tuple[int, int, bytes, str]] = {}

    def get(self, relative: str) -> tuple[bytes, str] | None:
        """The bytes and ETag of a file under the root, or None (missing, a folder, outside)."""
        joined = safe_join(str(self.root), relative)
        if joined is None:
            return None
        path = Path(joined)
        try:
            stat = path.stat()
        except OSError:
            return None
        if not path.is_file():
            return None
        cached = self._cache.get(relative)
        if cached and cached[0] == stat.st_mtime_ns and cached[1] == stat.st_size:
            return cached[2], cached[3]
        data = path.read_bytes()
        etag = hashlib.sha256(data).hexdigest()[:32]
        if len(self._cache) < 1000:
            self._cache[relative] = (stat.st_mtime_ns, stat.st_size, data, etag)
        return data, etag


def file_response(files: StaticFiles, relative: str, cache_control: str) -> Response:
    found = files.get(relative)
    if found is None:
        raise ChatError("not_found", "no such file")
    data, etag = found
    suffix = Path(relative).suffix.lower()
    mimetype = CONTENT_TYPES.get(suffix) or mimetypes.guess_type(relative)[0] or "application/octet-stream"
    if request.if_none_match.contains(etag):
        response = Response(b"", status=304)
    else:
        response = Response(data, content_type=mimetype)
    response.set_etag(etag)
    # Files have no hash in their names (no build step): browsers keep them but ask
    # again each time, which costs a 304 and picks up a new version at once.
    response.headers["Cache-Control"] = cache_control
    return response


def add_web_client(app: QuartTrio, node: Node, root: Path = STATIC_DIR) -> None:
    """Serve the client: `/` (the page), `/sw.js` (its service worker), `/static/<path>` (its
    files), security headers."""
    files = StaticFiles(root)

    @app.get("/")
    async def web_client_index() -> Response:
        response = file_response(files, "index.html", "no-cache")
        response.headers["Content-Security-Policy"] = content_security_policy(node, request.host, request.scheme)
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        # the page itself may record voice messages; nothing it embeds may, and no camera or location
        response.headers["Permissions-Policy"] = "camera=(), microphone=(self), geolocation=()"
        return response

    @app.get("/sw.js")
    async def web_client_service_worker() -> Response:
        # At the root, so that its scope is the whole client (a worker at /static/sw.js
        # would only control /static/).
        response = file_response(files, "sw.js", "no-cache")
        response.headers["Content-Security-Policy"] = SERVICE_WORKER_CSP
        return response

    @app.get("/static/<path:path>")
    async def web_client_static(path: str) -> Response:
        return file_response(files, path, "no-cache")

    @app.after_request
    async def common_headers(response: Response) -> Response:
        for name, value in COMMON_HEADERS.items():
            response.headers.setdefault(name, value)
        return response
