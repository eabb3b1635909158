"""Which web pages may use this node: CORS for ``/api/`` and the chat socket's Origin check.

A page of the web client served by one node of a cluster keeps working when that node is
gone by calling another member's API and socket: cross-origin requests. The origins
allowed are this node's own, those of the HTTP URLs the cluster's members announce (failed
and departed members too, as long as the member table lists them: a page served by a dead
node is exactly the one that needs another), and ``http.allowed_origins``.

- A response under ``/api/`` to a request from an allowed ``Origin`` carries
  ``Access-Control-Allow-Origin: <that origin>``; a preflight (``OPTIONS`` with
  ``Access-Control-Request-Method``) from it is answered here with 204 and may be cached
  for ``MAX_AGE`` seconds. Any other origin gets no CORS header and its preflight a 403,
  so browsers keep other sites' pages from reading the API. Requests carry bearer tokens,
  never cookies: no ``Access-Control-Allow-Credentials``.
- The chat socket (node/core/wsserver.py) refuses a handshake whose ``Origin`` is not
  allowed (403). A handshake without ``Origin`` comes from a program, not a page, and is
  let through, as is a page this node served itself under whatever host name the browser
  used (the socket's host on this node's HTTP port).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

PREFIX = "/api/"
ALLOW_METHODS = b"GET, POST, PUT, PATCH, DELETE"
ALLOW_HEADERS = b"Authorization, Content-Type, Range, If-None-Match, If-Range, X-Request-Id"
EXPOSE_HEADERS = b"X-Request-Id, ETag, Content-Range, Accept-Ranges"
MAX_AGE = b"600"  # seconds a browser may keep a preflight's answer
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def origin_of(url: str) -> str:
    """The origin of a URL as a browser writes it: `scheme://host[:port]`, lower case,
    the scheme's default port left out ("" if it has none)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return ""
    host = parts.hostname
    if not parts.scheme or not host:
        return ""
    scheme = parts.scheme.lower()
    name = f"[{host}]" if ":" in host else host
    return f"{scheme}://{name}" if port is None or port == DEFAULT_PORTS.get(scheme) else f"{scheme}://{name}:{port}"


def peer_origins(node: Any) -> set[str]:
    """The origins of the other members the cluster lists, in any state (none outside a cluster)."""
    if node.cluster is None:
        return set()
    me = node.config.node.id
    return {o for m in node.cluster.membership.members() if m.node != me and (o := origin_of(m.http_url))}


def allowed_origins(node: Any) -> set[str]:
    """Origins whose pages may use this node: its own, the cluster's members', the configured ones."""
    own = {origin_of(node.http_url), origin_of(node.config.http.public_url)}
    extra = {origin_of(url) for url in node.config.http.allowed_origins}
    return (own | extra | peer_origins(node)) - {""}


def socket_origin_allowed(node: Any, origin: str | None, host: str) -> bool:
    """Whether a chat socket handshake with this `Origin` (None: none sent) may proceed;
    `host` is its Host header."""
    if origin is None:
        return True  # not a browser: a token still has to be presented
    origin = origin_of(origin)
    if origin in allowed_origins(node):
        return True
    # a page this node served under the name the browser used: the socket's host, HTTP port
    parts = urlsplit(origin)
    try:
        same_host = urlsplit(f"//{host}").hostname == parts.hostname
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return False
    return same_host and port == node.http_port


def _header(scope: Mapping[str, Any], name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


def _with_vary(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers with `Origin` added to Vary: the answer depends on who asked."""
    out, varied = [], False
    for key, value in headers:
        if key.lower() == b"vary":
            value, varied = value + b", Origin", True
        out.append((key, value))
    if not varied:
        out.append((b"vary", b"Origin"))
    return out


class Cors:
    """Wraps an ASGI app: CORS for ``/api/`` on behalf of the origins `allowed()` gives."""

    def __init__(self, app: Any, allowed: Callable[[], set[str]]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Mapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        raw = _header(scope, b"origin")
        ok = raw is not None and origin_of(raw.decode("latin-1")) in self.allowed()
        if scope.get("method") == "OPTIONS" and raw is not None and _header(scope, b"access-control-request-method"):
            await self._preflight(send, raw if ok else None)
            return

        async def send_with_cors(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = _with_vary(message.get("headers", []))
                if ok and raw is not None:
                    headers += [(b"access-control-allow-origin", raw), (b"access-control-expose-headers", EXPOSE_HEADERS)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    @staticmethod
    async def _preflight(send: Any, origin: bytes | None) -> None:
        headers = [(b"vary", b"Origin"), (b"content-length", b"0")]
        if origin is not None:
            headers += [
                (b"access-control-allow-origin", origin),
                (b"access-control-allow-methods", ALLOW_METHODS),
                (b"access-control-allow-headers", ALLOW_HEADERS),
                (b"access-control-max-age", MAX_AGE),
            ]
        await send({"type": "http.response.start", "status": 204 if origin is not None else 403, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
