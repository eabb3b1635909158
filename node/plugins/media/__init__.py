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
as a child process by sandbox, which limits its memory and time), quota (what one
user may upload, the disk-space floor), probe (duration, size), webm (WebM tracks and duration), store (the content store interface and the local
directory), s3store (the S3-compatible object store), records (its tables), service (the
rules), routes (HTTP), ranges (Range headers), signing (signed URLs), copy (`chatnode
media copy`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import trio

from ... import ChatError, Message, PluginContext, hookimpl, shared_secret
from .quota import Quotas
from .records import KEYS
from .routes import media_routes
from .service import CONCERNING_MEDIA, MEDIA_KINDS, MediaService
from .settings import MediaSettings
from .signing import Signer, new_key, read_legacy_key
from .store import ContentStore, LocalStore

log = logging.getLogger(__name__)

KEY_WAIT = 30.0  # seconds a request waits for the signing key of a first start
KEY_RETRY = 1.0  # seconds before reading the signing key again when storage refused


def open_store(settings: MediaSettings, data_dir: Any) -> ContentStore:
    """The content store the settings name (not yet prepared)."""
    root = data_dir / settings.dir
    if settings.store == "s3":
        from .s3store import S3Store

        return S3Store(settings.s3, root)
    return LocalStore(root)


class MediaPlugin:
    name = "media"

    def __init__(self) -> None:
        self.service: MediaService | None = None
        self.quotas: Quotas | None = None
        self.signer: Signer | None = None
        self._signer_ready = trio.Event()

    async def get_signer(self) -> Signer | None:
        """The signer, once the cluster's signing key is settled (None: switched off)."""
        with trio.move_on_after(KEY_WAIT):
            await self._signer_ready.wait()
        if not self._signer_ready.is_set():
            raise ChatError("unavailable", "the media signing key is not ready yet")
        return self.signer

    @hookimpl
    def register_settings(self):
        return ("media", MediaSettings)

    @hookimpl
    def register_routes(self, ctx: PluginContext):
        return media_routes(ctx, self)

    @hookimpl
    async def startup(self, ctx: PluginContext, nursery: trio.Nursery) -> None:
        settings: MediaSettings = ctx.settings
        store = open_store(settings, ctx.data_dir)
        await store.prepare(ctx.node_id)
        self.service = MediaService(ctx, settings, store)
        await self.service.migrate()
        self.quotas = Quotas(settings, self.service.records, [ctx.data_dir, ctx.data_dir / settings.dir])
        ctx.add_statistics(self.statistics)
        nursery.start_soon(self._settle_signing_key, ctx, store)
        nursery.start_soon(self.service.serve_gc)

    def statistics(self) -> dict[str, Any]:
        assert self.service is not None and self.quotas is not None
        return {**self.service.statistics(), "refused_uploads": dict(self.quotas.refused)}

    async def _settle_signing_key(self, ctx: PluginContext, store: ContentStore) -> None:
        settings: MediaSettings = ctx.settings
        if settings.signed_urls:
            legacy = await trio.to_thread.run_sync(read_legacy_key, ctx.data_dir / settings.dir / "signing.key")
            while True:  # storage may be away for a while (a failover): the node waits, it does not stop
                try:
                    key = await shared_secret(ctx.store, KEYS, "signing", new_key, legacy, ctx.node_id)
                    break
                except Exception as exc:  # tried again; media requests wait meanwhile
                    log.warning("the media signing key is not settled yet (%s); trying again", exc)
                    await trio.sleep(KEY_RETRY)
            self.signer = Signer(key, settings.signed_url_ttl)
        self._signer_ready.set()

    @hookimpl
    async def shutdown(self) -> None:
        if self.service is not None:
            await self.service.store.aclose()

    @hookimpl
    def prepare_message(self, user_id: int, chat_id: int, content: Mapping[str, Any]):
        """A plain function: other kinds pass without a coroutine (this runs per message)."""
        if self.service is None or content.get("kind") not in MEDIA_KINDS:
            return None
        return self.service.prepare(user_id, chat_id, content)

    @hookimpl
    async def check_photo(self, user_id: int, chat_id: int, media_id: int) -> None:
        if self.service is None:
            raise ChatError("unavailable", "media is starting")
        await self.service.check_photo(user_id, chat_id, media_id)

    @hookimpl
    def on_message_stored(self, message: Message):
        """A plain function: the messages that concern no media (most) are passed over
        without a task switch."""
        if self.service is None or message.kind not in CONCERNING_MEDIA:
            return None
        return self.service.message_stored(message)

    async def collect_garbage(self, now: int | None = None, sweep: bool = False) -> dict[str, int]:
        """Run one garbage collection now (tests, the admin), whoever holds the lease; see
        MediaService.collect_garbage."""
        assert self.service is not None, "the media plugin has not started"
        return await self.service.collect_garbage(now, sweep=sweep)
