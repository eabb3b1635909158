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
Its content goes when no other item uses the same content (`refs`).

Collecting in a cluster. Every node of a cluster shares these tables, so a node's own
lock cannot keep its collector from deleting what another node is about to use, and the
plugin store has no compare-and-set. Deletions therefore follow one rule, both ways
round: *write your intent, then read the other side's*.

- A collector first writes a *doom* row for what it is about to delete (an item, or a
  content), then reads the claims on it (pending shares and shares for an item, `refs`
  rows for a content); it deletes only if it found none, and marks the doom done.
- A claimer first writes its claim (the gate its pending share, an upload its `refs`
  row), then reads the dooms of the same target. A deletion under way is waited for
  (at most DOOM_WINDOW, which a collector never exceeds). Then an item whose deletion
  is done is refused (`not_found`), and a content whose deletion is done or may have
  happened is installed again from the upload's staged copy, which is kept until then.

Reads and writes of the store are linearizable (one database), so of two such sides at
least one sees the other: either the collector finds the claim and backs off, or the
claimer finds the doom (done dooms are kept for DOOM_LINGER) and repairs. Collection is
idempotent (deleting twice is harmless), so two collectors at once are safe; a lease in
the `lease` table makes that rare (see `serve_gc`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson
import trio

from ... import ChatError, Message, PluginContext
from . import records, sandbox
from .images import ImageRejected
from .probe import probe_file
from .records import (
    CANCELLED,
    DELETING,
    DONE,
    DOOMS,
    GC,
    ITEMS,
    LEASE,
    OWNED,
    PENDING,
    PHOTOS,
    REFS,
    SHARES,
    Records,
    content_target,
    item_target,
    owned_key,
    ref_key,
    u64,
)
from .settings import MediaSettings
from .sniff import kind_accepts
from .store import ContentStore, LocalFile, Staged, StoreUnavailable

log = logging.getLogger(__name__)

MEDIA_KINDS = frozenset({"image", "audio", "video", "file"})
CONCERNING_MEDIA = MEDIA_KINDS | {"delete"}  # stored messages `message_stored` acts on
LOG_PAGE = 512  # log entries per page when searching a chat for a pending share
LOG_SCAN_LIMIT = 20_000  # entries searched at most per pending share
GC_BATCH = 500  # due items handled per round of a collection
DOOM_WINDOW = 30_000  # ms: a collector deletes within this of writing its doom, or not at all
DOOM_LINGER = 3_600_000  # ms: a done doom is kept this long (claimers look for it)
DOOM_POLL = 0.1  # seconds between looks at a deletion under way on another node
ORPHAN_AGE = 3_600_000  # ms: stored content this old without a `refs` row is a crash leftover
STAGING_AGE = 86_400_000  # ms: anyone's staged upload this old was abandoned by a crash
SWEEP_INTERVAL = 6 * 3_600_000  # ms between the lease holder's sweeps for leftovers
LEASE_KEY = b"gc"
LEASE_SETTLE = 0.5  # seconds between writing the lease and reading it back


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
        self.stats = {"collected_items": 0, "collected_contents": 0, "reinstalled": 0, "swept_staging": 0,
                      "swept_orphans": 0, "lease_skipped": 0}
        self._last_sweep = 0

    # -- uploads ----------------------------------------------------------------------

    async def store_upload(
        self, owner: int, staged: Staged, sha: str, size: int, mime: str, category: str, name: str | None
    ) -> dict[str, Any]:
        """Turn a complete staged upload into an item. The staged copy is the caller's to
        discard; the image re-encode made here is discarded here."""
        meta: dict[str, Any] = {}
        thumb: bytes | None = None
        clean: LocalFile | None = None
        try:
            if category == "image":
                assert isinstance(staged, LocalFile), "images are staged in a local file"
                clean = LocalFile(self.store.temp_path())
                async with self._images:
                    try:
                        meta, thumb = await sandbox.process_image(staged.path, clean.path, mime, self.settings)
                    except ImageRejected as exc:
                        raise ChatError("too_large" if exc.too_large else "bad_request", str(exc)) from None
                sha, size = meta.pop("sha256"), meta.pop("size")
                clean.size = size
                source: Staged = clean
            else:
                meta = await trio.to_thread.run_sync(self._probe, staged, size, mime)
                source = staged
            item = {"id": "", "owner": str(owner), "sha256": sha, "size": size, "mime": mime, "category": category,
                    "thumbnail": thumb is not None, "created": 0, **meta}
            if name:
                item["name"] = name
            with trio.CancelScope(shield=True):  # content installed gets its record, and the other way round
                committed = await self._commit_upload(item, source, thumb)
            return committed
        finally:
            if clean is not None:
                await self.store.discard(clean)

    def _probe(self, staged: Staged, size: int, mime: str) -> dict[str, Any]:
        with contextlib.closing(self.store.reader(staged)) as f:
            return probe_file(f, size, mime)

    async def _commit_upload(self, item: dict[str, Any], source: Staged, thumb: bytes | None) -> dict[str, Any]:
        """Install the content unless another item already uses it, commit the item and
        its `refs` row (the claim), then look for a deletion of the same content that may
        have raced with it and install again if so (see the module docstring)."""
        sha = item["sha256"]
        try:
            if not await self.records.refs_of(sha, limit=1):
                await self.store.install(sha, source, thumb)
        except StoreUnavailable as exc:
            raise ChatError("unavailable", "the media store is not answering; try again") from exc
        media_id = self.ctx.next_id()
        now = now_ms()
        item.update(id=str(media_id), created=now)
        batch = self.records.store.batch()
        batch.put(ITEMS, u64(media_id), orjson.dumps(item))
        batch.put(REFS, ref_key(sha, media_id), b"")
        batch.put(OWNED, owned_key(int(item["owner"]), media_id), u64(item["size"]))
        batch.put(GC, records.gc_key(now + self._grace_ms, media_id), b"")
        await self.records.store.write(batch)
        try:
            if await self._wait_for_dooms(content_target(sha)):
                await self.store.install(sha, source, thumb)
                self.stats["reinstalled"] += 1
        except BaseException:
            undo = self.records.store.batch()
            undo.delete(ITEMS, u64(media_id))
            undo.delete(REFS, ref_key(sha, media_id))
            undo.delete(OWNED, owned_key(int(item["owner"]), media_id))
            await self.records.store.write(undo)
            raise
        return item

    @property
    def _grace_ms(self) -> int:
        return int(self.settings.gc_grace * 1000)

    # -- dooms: deletions other nodes can see -----------------------------------------------

    async def _doom(self, target: bytes) -> tuple[bytes, int]:
        """Note that this node is deleting `target`; (doom key, when)."""
        started = now_ms()
        key = target + u64(self.ctx.node_id) + u64(started)
        batch = self.records.store.batch()
        batch.put(DOOMS, key, DELETING + u64(started))
        await self.records.store.write(batch)
        return key, started

    async def _end_doom(self, key: bytes, state: bytes) -> None:
        """DONE: kept for DOOM_LINGER so late claimers see it; CANCELLED: removed."""
        with trio.CancelScope(shield=True):
            batch = self.records.store.batch()
            if state == CANCELLED:
                batch.delete(DOOMS, key)
            else:
                batch.put(DOOMS, key, state + u64(now_ms()))
            await self.records.store.write(batch)

    async def _wait_for_dooms(self, target: bytes) -> bool:
        """After writing a claim on `target`: wait until no deletion of it is under way,
        then whether one was done (or may have been: past its window without an end)."""
        while True:
            rows = await self.records.dooms_of(target)
            now = now_ms()
            busy = [r for r in rows if r[3] == DELETING and now - r[2] < DOOM_WINDOW]
            if not busy:
                return any(r[3] in (DONE, DELETING) for r in rows)
            await trio.sleep(DOOM_POLL)

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

    async def prepare(self, user_id: int, chat_id: int, content: Mapping[str, Any]) -> dict[str, Any] | None:
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
                key = records.pending_key(media_id, chat_id, now_ms())
                batch = self.records.store.batch()
                batch.put(PENDING, key, u64(chat.last_seq))
                await self.records.store.write(batch)
                # the pending share is our claim: a collector that noted the item's deletion
                # before it could not see it (the module docstring)
                if await self._wait_for_dooms(item_target(media_id)) and await self.get(media_id) is None:
                    batch = self.records.store.batch()
                    batch.delete(PENDING, key)
                    await self.records.store.write(batch)
                    raise ChatError("not_found", "no such media")
        return {**content, "media": records.public(item)}

    # -- shares (from on_message_stored) ----------------------------------------------

    async def message_stored(self, message: Message) -> None:
        """A new message shares an upload, or a deletion releases one (only the kinds of
        CONCERNING_MEDIA can)."""
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

    async def collect_garbage(self, now: int | None = None, sweep: bool = False) -> dict[str, int]:
        """One collection: settle old pending shares, then every item that is due; with
        `sweep`, also remove abandoned staged uploads and content no item uses.

        `now` (Unix ms) defaults to the clock; tests pass a later time instead of waiting.
        Returns counts: items deleted, contents deleted, pending shares settled (and, with
        `sweep`, staged uploads and orphaned contents removed).
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
        await self._forget_old_dooms(now)
        if sweep:
            stats["staging"] = await self.store.sweep_staging((now - STAGING_AGE) / 1000)
            stats["orphans"] = await self.sweep_orphans(now)
            self.stats["swept_staging"] += stats["staging"]
            self._last_sweep = now
        self.collections += 1
        self.stats["collected_items"] += stats["items"]
        self.stats["collected_contents"] += stats["files"]
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
            if not await self._collectable(item, now, batch):
                await store.write(batch)
                return 0, 0
            await store.write(batch)
            doom, started = await self._doom(item_target(media_id))
            state = CANCELLED
            try:
                # claims made before our doom was written: a send that just passed the gate
                batch = store.batch()
                if not await self._collectable(item, now, batch) or now_ms() - started > DOOM_WINDOW // 2:
                    batch.put(GC, records.gc_key(now_ms() + DOOM_WINDOW, media_id), b"")
                    await store.write(batch)
                    return 0, 0
                sha = item["sha256"]
                batch.delete(ITEMS, u64(media_id))
                batch.delete(REFS, ref_key(sha, media_id))
                batch.delete(OWNED, owned_key(int(item["owner"]), media_id))
                for share_key, *_ in await self.records.shares_of(media_id):
                    batch.delete(SHARES, share_key)
                for pending_key, *_ in await self.records.pending_of(media_id):
                    batch.delete(PENDING, pending_key)
                for photo_key, _chat in await self.records.photo_chats(media_id):
                    batch.delete(PHOTOS, photo_key)
                await store.write(batch)
                state = DONE
            finally:
                await self._end_doom(doom, state)
        files = await self._collect_content(sha)
        log.debug("media %d collected%s", media_id, " with its content" if files else "")
        return 1, files

    async def _collectable(self, item: dict[str, Any], now: int, batch: records.StoreBatch) -> bool:
        """Whether the item may go now; if not because of a send in flight or its grace,
        a look is scheduled into `batch`."""
        live, wait_until = await self._liveness(item, now, batch)
        if wait_until is not None:
            batch.put(GC, records.gc_key(wait_until, int(item["id"])), b"")
        return not live and wait_until is None

    async def _collect_content(self, sha: str) -> int:
        """Delete a content no item uses (1), unless an upload claimed it meanwhile (0)."""
        if await self.records.refs_of(sha, limit=1):
            return 0
        doom, started = await self._doom(content_target(sha))
        state = CANCELLED
        try:
            if await self.records.refs_of(sha, limit=1) or now_ms() - started > DOOM_WINDOW // 2:
                return 0
            state = DONE  # from here on the content may be gone: claimers install it again
            with trio.fail_after(DOOM_WINDOW / 2000):
                await self.store.remove(sha)
            return 1
        except (StoreUnavailable, trio.TooSlowError) as exc:
            log.warning("could not delete media content %s (the next sweep retries): %s", sha, exc)
            return 0
        finally:
            await self._end_doom(doom, state)

    async def _forget_old_dooms(self, now: int) -> None:
        old = [key for key, _node, started, _state, _at in await self.records.dooms_of(b"")
               if now - started > DOOM_LINGER]
        if old:
            batch = self.records.store.batch()
            for key in old:
                batch.delete(DOOMS, key)
            await self.records.store.write(batch)

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

    async def sweep_orphans(self, now: int | None = None) -> int:
        """Delete stored content that no item uses and that is older than ORPHAN_AGE (left
        by a crash between installing an upload and committing its record)."""
        now = now_ms() if now is None else now
        removed = 0
        for sha, written in await self.store.list_content():
            if written * 1000 < now - ORPHAN_AGE and not await self.records.refs_of(sha, limit=1):
                removed += await self._collect_content(sha)
        if removed:
            log.info("removed %d orphaned media contents", removed)
        self.stats["swept_orphans"] += removed
        return removed

    async def take_lease(self, now: int) -> bool:
        """Whether this node is the one that collects now: it holds the lease, or takes a
        free or expired one (written, then read back after LEASE_SETTLE, so of two nodes
        that took it at once the one whose write landed last keeps it). The lease lasts
        three collection intervals and is renewed at each; a node that stops holding it
        lets another take over once it expired. It keeps two collectors apart most of the
        time; safety never depends on it (see the module docstring)."""
        table = self.records.store.table(LEASE)
        me = self.ctx.node_id
        raw = await table.get(LEASE_KEY)
        holder = orjson.loads(raw) if raw else None
        if holder is not None and holder["node"] != me and holder["until"] > now:
            return False
        batch = self.records.store.batch()
        until = now + int(3 * self.settings.gc_interval * 1000)
        batch.put(LEASE, LEASE_KEY, orjson.dumps({"node": me, "until": until}))
        await self.records.store.write(batch)
        if holder is None or holder["node"] != me:
            await trio.sleep(LEASE_SETTLE)
        raw = await table.get(LEASE_KEY)
        return raw is not None and orjson.loads(raw)["node"] == me

    async def serve_gc(self) -> None:
        """Collect every `gc_interval` seconds while this node holds the lease; the lease
        holder also sweeps leftovers at its first collection and every SWEEP_INTERVAL.
        A failure is logged and the next round runs as planned."""
        first = True
        while True:
            if not first:
                await trio.sleep(self.settings.gc_interval)
            first = False
            try:
                now = now_ms()
                if not await self.take_lease(now):
                    self.stats["lease_skipped"] += 1
                    continue
                sweep = now - self._last_sweep >= SWEEP_INTERVAL
                stats = await self.collect_garbage(now, sweep=sweep)
                if stats["items"] or stats.get("orphans") or stats.get("staging"):
                    log.info("media collected: %s", stats)
            except Exception:
                log.exception("media garbage collection failed")

    async def migrate(self) -> None:
        migrated = await self.records.migrate()
        if migrated:
            log.info("media: %d items moved from content counters to refs rows", migrated)

    def statistics(self) -> dict[str, Any]:
        return {"collections": self.collections, "store": self.store.kind, **self.stats}


def _carries(message: Message, media_id: int, now: int) -> bool:
    """Whether a log entry is a live message carrying the item."""
    media = message.media
    if message.kind not in MEDIA_KINDS or media is None or media.get("id") != str(media_id):
        return False
    return not message.expires_at or message.expires_at > now
