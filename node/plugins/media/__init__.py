"""Media: images, audio, video and files in messages (docs/media.md).

Uploads go over HTTP into a content-addressed store under the data dir (the same bytes
are stored once); their type is judged from the content and checked against an
allow-list per category, each with its own size limit. Images are re-encoded without
EXIF (orientation applied) and get a thumbnail. A message of kind image / audio / video
/ file names an upload by id; the gate (`prepare_message`) swaps the id for the upload's
metadata. Downloads are for the uploader and for whoever can see a message carrying the
upload, with Range requests, ETags and optional signed URLs. Uploads no message carries
are collected after a grace period.

Modules: settings (config), sniff (type detection), images (re-encode, thumbnails; run
as a child process by sandbox, which limits its memory and time), probe (duration,
size), webm (WebM tracks and duration), store (files), records (its tables), service
(the rules), routes (HTTP), ranges (Range headers), signing (signed URLs).
"""

from __future__ import annotations

from typing import Any

import trio

from ... import ChatError, Message, PluginContext, hookimpl
from . import records
from .routes import media_routes
from .service import MediaService
from .settings import MediaSettings
from .signing import Signer, load_or_create_key
from .store import ContentStore


class MediaPlugin:
    name = "media"

    def __init__(self) -> None:
        self.service: MediaService | None = None
        self.signer: Signer | None = None

    @hookimpl
    def register_settings(self):
        return ("media", MediaSettings)

    @hookimpl
    def register_routes(self, ctx: PluginContext):
        return media_routes(ctx, self)

    @hookimpl
    async def startup(self, ctx: PluginContext, nursery: trio.Nursery) -> None:
        settings: MediaSettings = ctx.settings
        store = ContentStore(ctx.data_dir / settings.dir)
        await trio.to_thread.run_sync(store.prepare)
        if settings.signed_urls:
            key = await trio.to_thread.run_sync(load_or_create_key, store.root / "signing.key")
            self.signer = Signer(key, settings.signed_url_ttl)
        self.service = MediaService(ctx, settings, store)
        ctx.add_statistics(self.service.statistics)
        nursery.start_soon(self.service.serve_gc)

    @hookimpl
    async def prepare_message(self, user_id: int, chat_id: int, content: dict[str, Any]):
        if self.service is None or content.get("kind") not in ("image", "audio", "video", "file"):
            return None
        return await self.service.prepare(user_id, chat_id, content)

    @hookimpl
    async def check_photo(self, user_id: int, chat_id: int, media_id: int) -> None:
        if self.service is None:
            raise ChatError("unavailable", "media is starting")
        await self.service.check_photo(user_id, chat_id, media_id)

    @hookimpl
    async def on_message_stored(self, message: Message) -> None:
        if self.service is not None:
            await self.service.message_stored(message)

    async def collect_garbage(self, now: int | None = None) -> dict[str, int]:
        """Run one garbage collection now (tests, the admin); see MediaService."""
        assert self.service is not None, "the media plugin has not started"
        return await self.service.collect_garbage(now)
