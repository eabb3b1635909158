"""A chatnode plugin: messages with a banned word are refused, edits included, and each
refusal is a strike against the sender, kept on whichever storage engine the node runs.

    [plugins.word_guard]
    words = ["spam", "scam"]

Admins see the strikes at GET /api/word-guard/strikes (admin token).
"""

from __future__ import annotations

import attrs

from node import PluginContext, PluginError, Request, Route, hookimpl


@attrs.frozen
class Settings:
    words: list[str] = attrs.Factory(lambda: ["spam"])


class WordGuard:
    name = "word_guard"
    version = "0.1.0"

    @hookimpl
    def register_settings(self):
        return ("word_guard", Settings)

    @hookimpl
    def register_error_codes(self):
        return {"banned_word": (422, "the message contains a word this node does not allow")}

    @hookimpl
    async def check_message(self, ctx: PluginContext, user_id: int, content: dict):
        text = (content.get("text") or "").lower()
        banned = next((word for word in ctx.settings.words if word in text), None)
        if banned is None:
            return
        strikes = ctx.store.table("strikes")
        key = user_id.to_bytes(8, "big")
        count = int.from_bytes(await strikes.get(key) or b"\0", "big") + 1
        batch = ctx.store.batch()
        batch.put("strikes", key, count.to_bytes(8, "big"))
        await ctx.store.write(batch)
        ctx.count("refused")
        raise PluginError("banned_word", f"{banned!r} is not allowed here")

    @hookimpl
    def register_routes(self, ctx: PluginContext):
        async def strikes(request: Request):
            rows = await ctx.store.table("strikes").scan()
            return {"strikes": {str(int.from_bytes(k, "big")): int.from_bytes(v, "big") for k, v in rows}}

        return [Route("GET", "/api/word-guard/strikes", strikes, admin=True)]
