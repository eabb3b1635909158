"""Cross-origin access to the HTTP API for the cluster's own web clients (CORS).

A page of the web client served by one node keeps working when that node is gone by
calling another member's API, which is a cross-origin request. So every response under
``/api/`` to a request whose ``Origin`` is one of the cluster's members (the HTTP URLs
the members announce, see node/cluster/service.py; failed and departed members too, as
long as the member table lists them) carries ``Access-Control-Allow-Origin: <that
origin>``, and a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) from it
is answered here with 204. Any other origin gets no CORS header (a preflight from it is
refused with 403), so browsers keep other sites' pages from reading the API. Requests
carry bearer tokens, never cookies: no ``Access-Control-Allow-Credentials``.

A node outside a cluster allows only its own origin (``Node.http_url``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

PREFIX = "/api/"
ALLOW_METHODS = b"GET, POST, PUT, PATCH, DELETE"
ALLOW_HEADERS = b"Authorization, Content-Type, X-Request-Id"
EXPOSE_HEADERS = b"X-Request-Id"
MAX_AGE = b"600"  # seconds a browser may keep a preflight's answer


def origin_of(url: str) -> str:
    """`scheme://host[:port]` of a URL, lower case ("" if it has none)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""


def _origins(node: Any, *, peers_only: bool) -> set[str]:
    if node.cluster is None:
        return set()
    me = node.config.node.id
    members = node.cluster.membership.members()
    return {o for m in members if not (peers_only and m.node == me) and (o := origin_of(m.http_url))}


def peer_origins(node: Any) -> set[str]:
    """The origins of the other members the cluster lists, in any state (none outside a cluster)."""
    return _origins(node, peers_only=True)


def member_origins(node: Any) -> set[str]:
    """The origins of this node and of every member its cluster lists."""
    return {origin_of(node.http_url)} | _origins(node, peers_only=False)


def _header(scope: dict, name: bytes) -> bytes | None:
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

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        raw = _header(scope, b"origin")
        origin = raw.decode("latin-1").lower() if raw else ""
        ok = bool(origin) and origin in self.allowed()
        if scope.get("method") == "OPTIONS" and raw and _header(scope, b"access-control-request-method"):
            await self._preflight(send, raw if ok else None)
            return

        async def send_with_cors(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = _with_vary(message.get("headers", []))
                if ok:
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
