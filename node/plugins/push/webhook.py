"""Webhooks and UnifiedPush: an HTTP POST of the notification as JSON to the endpoint.

UnifiedPush distributors (ntfy, NextPush, ...) give an app an endpoint URL that accepts
exactly this: the body is forwarded to the app. Any other HTTP receiver works the same
way. The body is not encrypted: use an https endpoint, or a `webpush` target with keys
if the distributor supports Web Push encryption.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from .providers import check_endpoint, check_status, ensure_public


class WebhookProvider:
    def __init__(self, http: httpx.AsyncClient, *, allow_private: bool) -> None:
        self._http = http
        self._allow_private = allow_private

    def check_target(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"endpoint": check_endpoint(body.get("endpoint"), self._allow_private)}

    async def send(self, target: dict[str, Any], notification: dict[str, Any]) -> None:
        await ensure_public(target["endpoint"], self._allow_private)
        response = await self._http.post(target["endpoint"], content=orjson.dumps(notification),
                                         headers={"Content-Type": "application/json"})
        check_status(response.status_code, response.headers)
