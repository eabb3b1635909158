"""Request ids and the access log, as an ASGI wrapper around the HTTP app.

Every HTTP response carries ``X-Request-Id``: the client's own, when it sent a sane one
(a reverse proxy's, say, so one id follows a request through both logs), else a new
one. While the request is handled the id is in `node.logs.REQUEST_ID`, so every log
line the request causes carries it. When the response is done, one access line is
logged (logger ``node.web.access``, INFO): method, path (never the query string, which
can hold a signed URL's signature), status, duration, bytes and client address.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from ..logs import REQUEST_ID

log = logging.getLogger(__name__)

HEADER = b"x-request-id"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's request id if it is sane (1-128 of letters, digits, ``._:-``), else a new one."""
    for name, value in headers:
        if name.lower() == HEADER:
            candidate = value.decode("latin-1")
            if _SANE_ID.fullmatch(candidate):
                return candidate
            break
    return secrets.token_hex(8)


class RequestLog:
    """Wraps an ASGI app: request ids on HTTP requests, and (if `access`) their access log."""

    def __init__(self, app: Any, *, access: bool = True,
                 observe: Callable[[dict, int | None, float], None] | None = None) -> None:
        self.app = app
        self.access = access
        self.observe = observe  # told (scope, status, seconds) of every request (the node's metrics)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("headers", []))
        started = time.perf_counter()
        status: int | None = None
        size = 0

        async def send_with_id(message: dict) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (HEADER, request_id.encode())]}
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            if self.access:
                self._log(scope, request_id, status, size, seconds)
            if self.observe is not None:
                self.observe(scope, status, seconds)
            REQUEST_ID.reset(token)

    @staticmethod
    def _log(scope: dict, request_id: str, status: int | None, size: int, seconds: float) -> None:
        client = (scope.get("client") or ("-",))[0]
        method, path = scope.get("method", "-"), scope.get("path", "-")
        shown = status if status is not None else "-"  # no response: the client went away first
        log.info(
            "%s %s %s %.1f ms %d bytes from %s", method, path, shown, seconds * 1000, size, client,
            extra={"request_id": request_id, "fields": {
                "method": method, "path": path, "status": status, "duration_ms": round(seconds * 1000, 2),
                "bytes": size, "client": client,
            }},
        )
