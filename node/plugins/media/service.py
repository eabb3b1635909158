"""Media items: storing uploads, who may read them, and garbage collection.

Who may read an item: its uploader, and every user who may see a stored message that
carries it (a member of the chat whose visible range holds the message's seq; see
`ChatState.visible_range`). A deleted, expired or purged message grants nothing. A
profile photo (the owner's current `photo`) may be read by whoever may see it
(`ctx.photo_visible`), a group's photo by the group's current members; the `check_photo`
gate notes which groups an item was made the photo of (`photos`), and a photo in use is
never collected.

Shares are recorded in two steps, because `on_message_stored` is a notification: it runs
after the message was delivered (a recipient may ask for the media first), and under
load it can be dropped. So the gate, `prepare_message`, durably records a *pending*
share (media, chat, the chat's seq at that moment) before the message is submitted.
A reader who is not covered by a recorded share but is in a chat with a pending share
gets the chat log searched from that seq on; what is found there is recorded as a
share. `on_message_stored` records shares early, so that search is rare. The log is the
truth throughout: a share counts only while its log entry still carries the item.

Garbage collection looks at an item when it is due in `media_gc`: `gc_grace` after its
upload, when a message carrying it is deleted, and when such a message expires. An item
goes when no message carries it any longer and no send of it is in flight (a pending
share younger than `pending_timeout`); one that was never sent waits out `gc_grace`.
Its file goes when no other item has the same content. One lock serialises every change
to media records and files, so a send can never pass the gate for an item that the
collector is deleting.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import orjson
import trio

from ... import ChatError, Message, PluginContext
from . import records
from . import sandbox
from .images import ImageRejected
from .probe import probe
from .records import CONTENT, GC, ITEMS, PENDING, PHOTOS, SHARES, Records, u64
from .settings import MediaSettings
from .sniff import kind_accepts
from .store import ContentStore, remove_quietly

log = logging.getLogger(__name__)

MEDIA_KINDS = frozenset({"image", "audio", "video", "file"})
LOG_PAGE = 512  # log entries per page when searching a chat for a pending share
LOG_SCAN_LIMIT = 20_000  # entries searched at most per pending share
GC_BATCH = 500  # due items handled per round of a collection


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class MediaService:
    def __init__(self, ctx: PluginContext, settings: MediaSettings, store: ContentStore) -> None:
        self.ctx = ctx
        self.records = Records(ctx.store)
        self.settings = settings
        self.store = store
        self._lock = trio.Lock()
        self._images = trio.CapacityLimiter(settings.processing_threads)
        self.collections = 0

    # -- uploads ----------------------------------------------------------------------

    async def store_upload(
        self, owner: int, tmp: Path, sha: str, size: int, mime: str, category: str, name: str | None
    ) -> dict[str, Any]:
        """Turn a complete, fsynced temp file into an item (the temp file is consumed)."""
        meta: dict[str, Any] = {}
        thumb: bytes | None = None
        clean_tmp: Path | None = None
        try:
            if category == "image":
                clean_tmp = self.store.temp_path()
                async with self._images:
                    try:
                        meta, thumb = await sandbox.process_image(tmp, clean_tmp, mime, self.settings)
                    except ImageRejected as exc:
                        raise ChatError("too_large" if exc.too_large else "bad_request", str(exc)) from None
                sha, size = meta.pop("sha256"), meta.pop("size")
                source = clean_tmp
            else:
                meta = await trio.to_thread.run_sync(probe, tmp, mime)
                source = tmp
            item = {"id": "", "owner": str(owner), "sha256": sha, "size": size, "mime": mime, "category": category,
                    "thumbnail": thumb is not None, "created": 0, **meta}
            if name:
                item["name"] = name
            with trio.CancelScope(shield=True):  # a file moved into place gets its record
                return await self._commit_upload(item, source, thumb)
        finally:
            await remove_quietly(*(p for p in (tmp, clean_tmp) if p is not None))

    async def _commit_upload(self, item: dict[str, Any], source: Path, thumb: bytes | None) -> dict[str, Any]:
        sha = item["sha256"]
        async with self._lock:
            content = await self.records.get_content(sha)
            installed = False
            if content is None:
                await trio.to_thread.run_sync(self.store.install, sha, source, thumb)
                installed = True
                content = {"items": 0, "size": item["size"], "mime": item["mime"]}
            media_id = self.ctx.next_id()
            now = now_ms()
            item.update(id=str(media_id), created=now)
            batch = self.records.store.batch()
            batch.put(ITEMS, u64(media_id), orjson.dumps(item))
            batch.put(CONTENT, bytes.fromhex(sha), orjson.dumps({**content, "items": content["items"] + 1}))
            batch.put(GC, records.gc_key(now + self._grace_ms, media_id), b"")
            try:
                await self.records.store.write(batch)
            except BaseException:
                if installed:
                    await trio.to_thread.run_sync(self.store.remove, sha)
                raise
        return item

    @property
    def _grace_ms(self) -> int:
        return int(self.settings.gc_grace * 1000)

    # -- reading -------------------------------------------------------------------

    async def get(self, media_id: int) -> dict[str, Any] | None:
        return await self.records.get_item(media_id)

    async def may_read(self, user_id: int, item: dict[str, Any]) -> bool:
        """Whether `user_id` may download the item (see the module docstring)."""
        if int(item["owner"]) == user_id:
            return True
        media_id = int(item["id"])
        if await self._photo_visible(user_id, item):
            return True
        now = now_ms()
        for _key, chat_id, seq, expires in await self.records.shares_of(media_id):
            if expires and expires <= now:
                continue
            if await self._visible(user_id, chat_id, seq) and await self._log_carries(chat_id, seq, media_id, now):
                return True
        for _key, chat_id, _started, floor in await self.records.pending_of(media_id):
            if await self._visible_range(user_id, chat_id) is None:
                continue
            found = await self._search_log(chat_id, floor, media_id, now)
            if found:
                await self._record_shares(media_id, chat_id, found)
            for seq, _ in found:
                if await self._visible(user_id, chat_id, seq):
                    return True
        return False

    async def _visible_range(self, user_id: int, chat_id: int) -> tuple[int, int] | None:
        """First and last seq of a chat the user may see (current or former member)."""
        chat = await self.ctx.chat(chat_id)
        member = await self.ctx.member(chat_id, user_id) if chat is not None else None
        if chat is None or member is None:
            return None
        last = chat.last_seq if member.until_seq is None else min(member.until_seq, chat.last_seq)
        return member.from_seq, last

    async def _visible(self, user_id: int, chat_id: int, seq: int) -> bool:
        visible = await self._visible_range(user_id, chat_id)
        return visible is not None and visible[0] <= seq <= visible[1]

    async def _log_carries(self, chat_id: int, seq: int, media_id: int, now: int) -> bool:
        found = await self.ctx.messages(chat_id, seq, seq, 1)
        return bool(found) and _carries(found[0], media_id, now)

    async def _search_log(self, chat_id: int, floor: int, media_id: int, now: int) -> list[tuple[int, int]]:
        """(seq, expires_at) of the live messages after `floor` in a chat that carry the item."""
        chat = await self.ctx.chat(chat_id)
        if chat is None:
            return []
        found = []
        first, last = floor + 1, chat.last_seq
        scanned = 0
        while first <= last and scanned < LOG_SCAN_LIMIT:
            page = await self.ctx.messages(chat_id, first, last, LOG_PAGE)
            if not page:
                break
            for message in page:
                if _carries(message, media_id, now):
                    found.append((message.seq, message.expires_at or 0))
            scanned += len(page)
            first = page[-1].seq + 1
        return found

    # -- photos ------------------------------------------------------------------------

    async def check_photo(self, user_id: int, chat_id: int, media_id: int) -> None:
        """`check_photo`: an image the user uploaded; a group's photo is noted (`photos`)."""
        item = await self.get(media_id)
        if item is None:
            raise ChatError("not_found", "no such media")
        if int(item["owner"]) != user_id:
            raise ChatError("forbidden", "a photo must be an image you uploaded")
        if item["category"] != "image":
            raise ChatError("bad_request", f"a photo must be an image, not {item['mime']}")
        if chat_id:
            chat = await self.ctx.chat(chat_id)
            previous = chat.photo if chat is not None else None
        else:
            owner = await self.ctx.user(user_id)
            previous = owner.photo if owner is not None else None
        async with self._lock:
            if await self.get(media_id) is None:
                raise ChatError("not_found", "no such media")
            batch = self.records.store.batch()
            if previous and previous.isdigit() and previous != str(media_id):  # the one replaced may go
                batch.put(GC, records.gc_key(now_ms() + self._grace_ms, int(previous)), b"")
            if chat_id:
                batch.put(PHOTOS, u64(media_id) + u64(chat_id), b"")
            if not item.get("used"):
                batch.put(ITEMS, u64(media_id), orjson.dumps({**item, "used": True}))
            if len(batch):
                await self.records.store.write(batch)

    async def _photo_visible(self, user_id: int, item: dict[str, Any]) -> bool:
        """The item is its owner's profile photo and `user_id` may see it, or the photo of
        a group `user_id` belongs to."""
        owner = await self.ctx.user(int(item["owner"]))
        if owner is not None and owner.photo == item["id"] and await self.ctx.photo_visible(user_id, owner.id):
            return True
        for _key, chat_id in await self.records.photo_chats(int(item["id"])):
            chat = await self.ctx.chat(chat_id)
            if chat is not None and chat.photo == item["id"] and user_id in chat.member_ids:
                return True
        return False

    async def _photo_live(self, item: dict[str, Any], batch: records.StoreBatch) -> bool:
        """Whether the item is a profile or group photo now (stale group notes go)."""
        owner = await self.ctx.user(int(item["owner"]))
        live = owner is not None and owner.photo == item["id"]
        for key, chat_id in await self.records.photo_chats(int(item["id"])):
            chat = await self.ctx.chat(chat_id)
            if chat is not None and chat.photo == item["id"]:
                live = True
            else:
                batch.delete(PHOTOS, key)
        return live

    # -- sending (the gate) ------------------------------------------------------------

    async def prepare(self, user_id: int, chat_id: int, content: dict[str, Any]) -> dict[str, Any] | None:
        """`prepare_message`: resolve `media` to its metadata and record a pending share."""
        kind = content.get("kind")
        if kind not in MEDIA_KINDS:
            return None
        ref = content.get("media")
        if not isinstance(ref, str) or not ref.isdigit():
            raise ChatError("bad_request", "'media' must be the id of an upload")
        media_id = int(ref)
        item = await self.get(media_id)
        if item is None:
            raise ChatError("not_found", "no such media")
        if int(item["owner"]) != user_id and not await self.may_read(user_id, item):
            raise ChatError("forbidden", "you can only send media you uploaded or can see (forwarding)")
        if not kind_accepts(kind, item["category"], item["mime"]):
            raise ChatError("bad_request", f"a {kind} message cannot carry {item['mime']} media")
        chat = await self.ctx.chat(chat_id)
        if chat is not None and user_id in chat.member_ids:  # else the core refuses it
            async with self._lock:
                if await self.get(media_id) is None:
                    raise ChatError("not_found", "no such media")
                batch = self.records.store.batch()
                batch.put(PENDING, records.pending_key(media_id, chat_id, now_ms()), u64(chat.last_seq))
                await self.records.store.write(batch)
        return {**content, "media": records.public(item)}

    # -- shares (from on_message_stored) ----------------------------------------------

    async def message_stored(self, message: Message) -> None:
        media = message.media
        if message.kind in MEDIA_KINDS and media is not None and str(media.get("id", "")).isdigit():
            await self._record_shares(int(media["id"]), message.chat_id, [(message.seq, message.expires_at or 0)])
        elif message.kind == "delete" and isinstance(message.record.get("target_seq"), int):
            chat_id, target_seq = message.chat_id, message.record["target_seq"]
            found = await self.ctx.messages(chat_id, target_seq, target_seq, 1)
            tombstone = found[0].record if found else {}
            released = tombstone.get("deleted_media")
            if released and str(released).isdigit():
                await self._release(int(released), chat_id, target_seq)

    async def _record_shares(self, media_id: int, chat_id: int, found: list[tuple[int, int]]) -> None:
        async with self._lock:
            item = await self.get(media_id)
            if item is None:
                return
            batch = self.records.store.batch()
            for seq, expires in found:
                batch.put(SHARES, records.share_key(media_id, chat_id, seq), u64(expires))
                if expires:
                    batch.put(GC, records.gc_key(expires, media_id), b"")
            if not item.get("used"):
                batch.put(ITEMS, u64(media_id), orjson.dumps({**item, "used": True}))
            await self.records.store.write(batch)

    async def _release(self, media_id: int, chat_id: int, seq: int) -> None:
        async with self._lock:
            batch = self.records.store.batch()
            batch.delete(SHARES, records.share_key(media_id, chat_id, seq))
            batch.put(GC, records.gc_key(now_ms(), media_id), b"")
            await self.records.store.write(batch)

    # -- garbage collection --------------------------------------------------------------

    async def collect_garbage(self, now: int | None = None) -> dict[str, int]:
        """One collection: settle old pending shares, then every item that is due.

        `now` (Unix ms) defaults to the clock; tests pass a later time instead of waiting.
        Returns counts: items deleted, content files deleted, pending shares settled.
        """
        now = now_ms() if now is None else now
        stats = {"items": 0, "files": 0, "pending": await self._settle_pending(now)}
        while True:
            due = await self.records.due_for_gc(now, GC_BATCH)
            for key, media_id in due:
                items, files = await self._collect_one(key, media_id, now)
                stats["items"] += items
                stats["files"] += files
            if len(due) < GC_BATCH:
                break
        self.collections += 1
        return stats

    async def _settle_pending(self, now: int) -> int:
        """Pending shares older than pending_timeout: record what reached the log, drop them."""
        cutoff = now - int(self.settings.pending_timeout * 1000)
        old = await self.records.old_pending(cutoff)
        for key, media_id, chat_id, floor in old:
            found = await self._search_log(chat_id, floor, media_id, now)
            if found:
                await self._record_shares(media_id, chat_id, found)
            async with self._lock:
                batch = self.records.store.batch()
                batch.delete(PENDING, key)
                await self.records.store.write(batch)
        return len(old)

    async def _collect_one(self, key: bytes, media_id: int, now: int) -> tuple[int, int]:
        store = self.records.store
        async with self._lock:
            batch = store.batch()
            batch.delete(GC, key)
            item = await self.get(media_id)
            if item is None:
                await store.write(batch)
                return 0, 0
            live, wait_until = await self._liveness(item, now, batch)
            if live:
                await store.write(batch)
                return 0, 0
            if wait_until is not None:
                batch.put(GC, records.gc_key(wait_until, media_id), b"")
                await store.write(batch)
                return 0, 0
            sha = item["sha256"]
            batch.delete(ITEMS, u64(media_id))
            for share_key, *_ in await self.records.shares_of(media_id):
                batch.delete(SHARES, share_key)
            for pending_key, *_ in await self.records.pending_of(media_id):
                batch.delete(PENDING, pending_key)
            for photo_key, _chat in await self.records.photo_chats(media_id):
                batch.delete(PHOTOS, photo_key)
            content = await self.records.get_content(sha)
            last = content is None or content["items"] <= 1
            if last:
                batch.delete(CONTENT, bytes.fromhex(sha))
            else:
                batch.put(CONTENT, bytes.fromhex(sha), orjson.dumps({**content, "items": content["items"] - 1}))
            await store.write(batch)
            if last:
                await trio.to_thread.run_sync(self.store.remove, sha)
            log.debug("media %d collected%s", media_id, " with its file" if last else "")
            return 1, int(last)

    async def _liveness(self, item: dict[str, Any], now: int, batch: records.StoreBatch) -> tuple[bool, int | None]:
        """(live, wait until): live if a message still carries it; otherwise a time to look
        again if a send may be in flight or its grace has not passed. Stale shares are
        dropped into `batch`."""
        media_id = int(item["id"])
        live = await self._photo_live(item, batch)
        for key, chat_id, seq, expires in await self.records.shares_of(media_id):
            if (not expires or expires > now) and await self._log_carries(chat_id, seq, media_id, now):
                live = True
            else:
                batch.delete(SHARES, key)
        if live:
            return True, None
        timeout = int(self.settings.pending_timeout * 1000)
        in_flight = [started + timeout for _, _, started, _ in await self.records.pending_of(media_id)
                     if started + timeout > now]
        if in_flight:
            return False, max(in_flight)
        grace_end = item["created"] + self._grace_ms
        if not item.get("used") and grace_end > now:
            return False, grace_end
        return False, None

    async def sweep_orphans(self) -> int:
        """Remove content files that no record names (left by a crash between moving a
        file into place and committing its record). Runs once at start-up."""
        known = await self.records.all_content()
        orphans = await trio.to_thread.run_sync(self.store.orphans, known)
        removed = 0
        for sha in orphans:
            async with self._lock:
                if await self.records.get_content(sha) is None:
                    await trio.to_thread.run_sync(self.store.remove, sha)
                    removed += 1
        if removed:
            log.info("removed %d orphaned media files", removed)
        return removed

    async def serve_gc(self) -> None:
        """Collect every `gc_interval` seconds until cancelled; a failure is logged."""
        try:
            await self.sweep_orphans()
        except Exception:
            log.exception("media orphan sweep failed")
        while True:
            await trio.sleep(self.settings.gc_interval)
            try:
                stats = await self.collect_garbage()
                if stats["items"]:
                    log.info("media collected: %(items)d items, %(files)d files", stats)
            except Exception:
                log.exception("media garbage collection failed")

    def statistics(self) -> dict[str, Any]:
        return {"collections": self.collections}


def _carries(message: Message, media_id: int, now: int) -> bool:
    """Whether a log entry is a live message carrying the item."""
    media = message.media
    if message.kind not in MEDIA_KINDS or media is None or media.get("id") != str(media_id):
        return False
    return not message.expires_at or message.expires_at > now
