"""Push: notify the devices of users who have none online (docs/push.md).

Devices register push targets over HTTP: a browser's Web Push subscription, or a
webhook / UnifiedPush endpoint. When a content message is stored for members with no
device online (`on_recipients_offline`), each of their targets is notified, through the
provider for its kind. Two providers are built in (`webpush`, `webhook`); plugins add
more with the `register_push_providers` hook. By default a notification carries only
ids and a count, never message text (`previews = true` adds the text).

Modules: settings (config), targets (LMDB), providers (the provider contract and the
endpoint rules), vapid (the node's VAPID keys and JWTs), webpush and webhook (the
built-in providers), dispatch (collapsing, retries, workers).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import trio

from ... import ChatError, hookimpl, json_body, parse_id
from .dispatch import Dispatcher
from .settings import PushSettings
from .targets import Targets, public
from .vapid import Vapid, load_or_create_key
from .webhook import WebhookProvider
from .webpush import WebPushProvider


class PushPlugin:
    name = "push"

    def __init__(self) -> None:
        self.dispatcher: Dispatcher | None = None
        self.vapid: Vapid | None = None
        self.http: httpx.AsyncClient | None = None
        self.targets: Targets | None = None

    @hookimpl
    def register_settings(self):
        return ("push", PushSettings)

    @hookimpl
    async def startup(self, node, nursery: trio.Nursery) -> None:
        settings: PushSettings = node.plugins.settings("push")
        key = await trio.to_thread.run_sync(load_or_create_key, node.config.data_dir / "push" / "vapid_private.pem")
        subject = settings.vapid_subject or node.config.http.public_url or "mailto:postmaster@localhost"
        self.vapid = Vapid(key, subject)
        self.http = httpx.AsyncClient(timeout=settings.timeout, follow_redirects=False)
        self.targets = Targets(node.store("push"))
        providers: dict[str, Any] = {}
        for offered in node.plugins.collect("register_push_providers", node=node):
            for kind, provider in offered.items():
                if kind in providers:
                    raise ValueError(f"two push providers for the kind {kind!r}")
                providers[kind] = provider
        self.dispatcher = Dispatcher(node, settings, providers, self.targets)
        await nursery.start(self.dispatcher.serve)

    @hookimpl
    async def shutdown(self) -> None:
        if self.http is not None:
            await self.http.aclose()

    @hookimpl
    def register_push_providers(self, node):
        settings: PushSettings = node.plugins.settings("push")
        assert self.http is not None and self.vapid is not None
        return {
            "webpush": WebPushProvider(self.http, self.vapid, ttl=settings.ttl,
                                       allow_private=settings.allow_private_endpoints),
            "webhook": WebhookProvider(self.http, allow_private=settings.allow_private_endpoints),
        }

    @hookimpl
    async def on_recipients_offline(self, chat_id: int, message: dict[str, Any], user_ids: list[int]) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.offer(chat_id, message, user_ids)

    @hookimpl
    async def on_device_revoked(self, user_id: int, device_id: int) -> None:
        """A logged-out device must not be notified for the account any more: delete the
        targets it registered and drop what waits for them. This runs in the plugin's pump,
        so no new message can queue for them meanwhile; a send already on the wire
        finishes, but is never retried (its target is gone)."""
        if self.dispatcher is None or self.targets is None:
            return
        gone = [int(target["id"]) for target in await self.targets.of_device(user_id, device_id)]
        for target_id in gone:
            self.dispatcher.forget(target_id)
        if gone:
            await self.targets.delete(user_id, *gone)

    # -- HTTP ---------------------------------------------------------------------------

    @hookimpl
    def register_routes(self, node):
        settings: PushSettings = node.plugins.settings("push")

        def ready() -> tuple[Dispatcher, Targets]:
            if self.dispatcher is None or self.targets is None:
                raise ChatError("unavailable", "push is starting")
            return self.dispatcher, self.targets

        async def add_target():
            device = await node.current_device()
            dispatcher, targets = ready()
            body = await json_body()
            kind = body.get("kind")
            provider = dispatcher.providers.get(kind) if isinstance(kind, str) else None
            if provider is None:
                kinds = ", ".join(sorted(dispatcher.providers))
                raise ChatError("bad_request", f"'kind' must be one of: {kinds}")
            fields = provider.check_target(body)
            existing = await targets.of_user(device.user_id)
            for target in existing:  # a browser that subscribes again gets the same target
                if target["kind"] == kind and target["endpoint"] == fields["endpoint"]:
                    target.update(fields, device=str(device.device_id))  # it follows the device that renewed it
                    await targets.put(device.user_id, target)
                    return node.json_response({"target": public(target)}, 201)
            target = {"id": str(node.ids.next_id()), "kind": kind, **fields, "device": str(device.device_id),
                      "created": time.time_ns() // 1_000_000}
            excess = max(0, len(existing) + 1 - settings.max_targets_per_user)
            evict = sorted(existing, key=lambda t: t["created"])[:excess]
            for old in evict:
                dispatcher.forget(int(old["id"]))
            await targets.put(device.user_id, target, evict)
            return node.json_response({"target": public(target)}, 201)

        async def list_targets():
            device = await node.current_device()
            _, targets = ready()
            return node.json_response({"targets": [public(t) for t in await targets.of_user(device.user_id)]})

        async def delete_target(target_id: str):
            device = await node.current_device()
            dispatcher, targets = ready()
            try:
                tid = parse_id(target_id)
            except ValueError:
                raise ChatError("not_found", "no such push target") from None
            if await targets.get(device.user_id, tid) is None:
                raise ChatError("not_found", "no such push target")
            dispatcher.forget(tid)
            await targets.delete(device.user_id, tid)
            return "", 204

        async def vapid_key():
            if self.vapid is None:
                raise ChatError("unavailable", "push is starting")
            return node.json_response({"public_key": self.vapid.public_key})

        return [
            ("POST", "/api/push/targets", add_target),
            ("GET", "/api/push/targets", list_targets),
            ("DELETE", "/api/push/targets/<target_id>", delete_target),
            ("GET", "/api/push/vapid", vapid_key),
        ]

    def statistics(self) -> dict[str, Any]:
        return self.dispatcher.statistics() if self.dispatcher is not None else {}
