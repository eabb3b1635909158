"""Push: notify the devices of users who have none online (docs/push.md).

Devices register push targets over HTTP: a browser's Web Push subscription, or a
webhook / UnifiedPush endpoint. When a content message is stored for members with no
device online (`on_recipients_offline`), each of their targets is notified, through the
provider for its kind. Two providers are built in (`webpush`, `webhook`); plugins add
more with the `register_push_providers` hook. By default a notification carries only
ids and a count, never message text (`previews = true` adds the text).

Modules: settings (config), targets (its table), providers (the provider contract and the
endpoint rules), http_client (requests pinned to checked addresses, bounded answers),
vapid (the node's VAPID keys and JWTs), webpush and webhook (the built-in providers),
dispatch (collapsing, retries, workers).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import trio

from ... import (
    ChatError,
    Message,
    PluginContext,
    Request,
    Response,
    Route,
    hookimpl,
    json_response,
    parse_id,
    shared_secret,
)
from . import hooks
from .dispatch import Dispatcher
from .http_client import PushHTTP
from .settings import PushSettings
from .targets import Targets, public
from .vapid import Vapid, load_key, new_pem, read_legacy_pem
from .webhook import WebhookProvider
from .webpush import WebPushProvider

KEYS = "keys"  # table of the VAPID key (see node.shared_secret)

log = logging.getLogger(__name__)

KEY_RETRY = 1.0  # seconds before reading the VAPID key again when storage refused


class PushPlugin:
    name = "push"

    def __init__(self) -> None:
        self.dispatcher: Dispatcher | None = None
        self.vapid: Vapid | None = None
        self.http: PushHTTP | None = None
        self.targets: Targets | None = None

    @hookimpl
    def register_settings(self):
        return ("push", PushSettings)

    @hookimpl
    def register_hookspecs(self):
        return hooks

    @hookimpl
    async def startup(self, ctx: PluginContext, nursery: trio.Nursery) -> None:
        settings: PushSettings = ctx.settings
        subject = settings.vapid_subject or ctx.public_url or "mailto:postmaster@localhost"
        self.vapid = Vapid(None, subject)
        legacy = await trio.to_thread.run_sync(read_legacy_pem, ctx.data_dir / "push" / "vapid_private.pem")
        self.http = PushHTTP(timeout=settings.timeout, connections=settings.workers,
                             allow_private=settings.allow_private_endpoints)
        self.targets = Targets(ctx.store)
        providers: dict[str, Any] = {}
        for offered in ctx.collect("register_push_providers"):
            for kind, provider in offered.items():
                if kind in providers:
                    raise ValueError(f"two push providers for the kind {kind!r}")
                providers[kind] = provider
        self.dispatcher = Dispatcher(ctx, settings, providers, self.targets)
        ctx.add_statistics(self.dispatcher.statistics)
        nursery.start_soon(self._settle_key, ctx, legacy)
        await nursery.start(self.dispatcher.serve)

    async def _settle_key(self, ctx: PluginContext, legacy: bytes | None) -> None:
        """The cluster's VAPID key: read, taken over from an older version's file, or made;
        read again while storage refuses (a failover), as the node must not stop for it."""
        assert self.vapid is not None
        while True:
            try:
                pem = await shared_secret(ctx.store, KEYS, "vapid", new_pem, legacy, ctx.node_id)
                break
            except Exception as exc:  # tried again; web push waits meanwhile
                log.warning("the VAPID key is not settled yet (%s); trying again", exc)
                await trio.sleep(KEY_RETRY)
        self.vapid.set_key(load_key(pem, "the stored VAPID key"))

    @hookimpl
    async def shutdown(self) -> None:
        if self.http is not None:
            await self.http.aclose()

    @hookimpl
    def register_push_providers(self, ctx: PluginContext):
        settings: PushSettings = ctx.settings
        assert self.http is not None and self.vapid is not None
        return {
            "webpush": WebPushProvider(self.http, self.vapid, ttl=settings.ttl),
            "webhook": WebhookProvider(self.http),
        }

    @hookimpl
    async def on_recipients_offline(self, message: Message, user_ids: list[int]) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.offer(message, user_ids)

    @hookimpl
    async def on_reaction(self, ctx: PluginContext, chat_id: int, seq: int, message_id: int, user_id: int,
                          emoji: str, author_id: int) -> None:
        """Someone reacted to a message of a user who has no device online: tell them."""
        if self.dispatcher is None or await ctx.is_online(author_id):
            return
        found = await ctx.messages(chat_id, seq, seq, 1)
        text = found[0].text if found else None
        await self.dispatcher.offer_reaction(chat_id, seq, message_id, user_id, emoji, author_id, text)

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
    def register_routes(self, ctx: PluginContext):
        settings: PushSettings = ctx.settings

        def ready() -> tuple[Dispatcher, Targets]:
            if self.dispatcher is None or self.targets is None:
                raise ChatError("unavailable", "push is starting")
            return self.dispatcher, self.targets

        async def add_target(request: Request):
            user_id, device_id = await request.user_id(), await request.device_id()
            dispatcher, targets = ready()
            body = await request.json()
            kind = body.get("kind")
            provider = dispatcher.providers.get(kind) if isinstance(kind, str) else None
            if provider is None:
                kinds = ", ".join(sorted(dispatcher.providers))
                raise ChatError("bad_request", f"'kind' must be one of: {kinds}")
            fields = provider.check_target(body)
            existing = await targets.of_user(user_id)
            for target in existing:  # a browser that subscribes again gets the same target
                if target["kind"] == kind and target["endpoint"] == fields["endpoint"]:
                    target.update(fields, device=str(device_id))  # it follows the device that renewed it
                    await targets.put(user_id, target)
                    return json_response({"target": public(target)}, 201)
            target = {"id": str(ctx.next_id()), "kind": kind, **fields, "device": str(device_id),
                      "created": time.time_ns() // 1_000_000}
            excess = max(0, len(existing) + 1 - settings.max_targets_per_user)
            evict = sorted(existing, key=lambda t: t["created"])[:excess]
            for old in evict:
                dispatcher.forget(int(old["id"]))
            await targets.put(user_id, target, evict)
            return json_response({"target": public(target)}, 201)

        async def list_targets(request: Request):
            user_id = await request.user_id()
            _, targets = ready()
            return {"targets": [public(t) for t in await targets.of_user(user_id)]}

        async def delete_target(request: Request, target_id: str):
            user_id = await request.user_id()
            dispatcher, targets = ready()
            try:
                tid = parse_id(target_id)
            except ValueError:
                raise ChatError("not_found", "no such push target") from None
            if await targets.get(user_id, tid) is None:
                raise ChatError("not_found", "no such push target")
            dispatcher.forget(tid)
            await targets.delete(user_id, tid)
            return Response(b"", 204)

        async def vapid_key(request: Request):
            if self.vapid is None or not await self.vapid.ready():
                raise ChatError("unavailable", "push is starting")
            return {"public_key": self.vapid.public_key}

        return [
            Route("POST", "/api/push/targets", add_target),
            Route("GET", "/api/push/targets", list_targets),
            Route("DELETE", "/api/push/targets/<target_id>", delete_target),
            Route("GET", "/api/push/vapid", vapid_key),
        ]
