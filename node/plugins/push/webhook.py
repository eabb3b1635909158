"""Webhooks and UnifiedPush: an HTTP POST of the notification as JSON to the endpoint.

UnifiedPush distributors (ntfy, NextPush, ...) give an app an endpoint URL that accepts
exactly this: the body is forwarded to the app. Any other HTTP receiver works the same
way. The body is not encrypted: use an https endpoint, or a `webpush` target with keys
if the distributor supports Web Push encryption.
"""

from __future__ import annotations

from typing import Any

import orjson

from .http_client import PushHTTP
from .providers import check_endpoint, check_status


class WebhookProvider:
    def __init__(self, http: PushHTTP) -> None:
        self._http = http

    def check_target(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"endpoint": check_endpoint(body.get("endpoint"), self._http.allow_private)}

    async def send(self, target: dict[str, Any], notification: dict[str, Any]) -> None:
        answer = await self._http.post(target["endpoint"], orjson.dumps(notification),
                                       {"Content-Type": "application/json"})
        check_status(answer.status, answer.headers)
