"""The media plugin's tables (in its own store, on whichever engine the node runs).

    items    u64 media id                      -> item (JSON, see `public`)
    content  sha256 (32 bytes)                 -> {"items": n, "size", "mime"} (refcount)
    shares   u64 media | u64 chat | u64 seq    -> u64 expires_at ms (0: never)
    pending  u64 media | u64 chat | u64 ms     -> u64 chat seq when the send began
    gc       u64 due ms | u64 media id         -> b"" (look at this item then)
    photos   u64 media | u64 chat               -> b"" (the item was made that group's photo)

An *item* is one upload by one user. Its bytes live in the content store under their
SHA-256, shared by every item with the same bytes; `content` counts those items and the
file goes when the count reaches 0. A *share* is a stored message that carries the item;
a *pending* share is a send that passed the gate and may not be stored yet. The chat
logs stay the truth: shares are checked against them before they count.
"""

from __future__ import annotations

from typing import Any

import orjson

from ... import PluginStore, StoreBatch

ITEMS = "items"
CONTENT = "content"
SHARES = "shares"
PENDING = "pending"
GC = "gc"
PHOTOS = "photos"
TABLES = [ITEMS, CONTENT, SHARES, PENDING, GC, PHOTOS]

#: Item fields that messages and `GET /api/media/{id}/info` show.
PUBLIC_FIELDS = ("id", "mime", "size", "name", "width", "height", "duration", "thumbnail")

SCAN_LIMIT = 100_000  # shares or pending sends of one item read at most


def u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def from_u64(raw: bytes) -> int:
    return int.from_bytes(raw[:8], "big")


def public(item: dict[str, Any]) -> dict[str, Any]:
    return {k: item[k] for k in PUBLIC_FIELDS if k in item}


class Records:
    """Typed access to the tables; writes go into a `StoreBatch`."""

    def __init__(self, store: PluginStore) -> None:
        self.store = store
        self.items = store.table(ITEMS)
        self.content = store.table(CONTENT)
        self.shares = store.table(SHARES)
        self.pending = store.table(PENDING)
        self.gc = store.table(GC)
        self.photos = store.table(PHOTOS)

    async def get_item(self, media_id: int) -> dict[str, Any] | None:
        raw = await self.items.get(u64(media_id))
        return orjson.loads(raw) if raw is not None else None

    async def get_content(self, sha: str) -> dict[str, Any] | None:
        raw = await self.content.get(bytes.fromhex(sha))
        return orjson.loads(raw) if raw is not None else None

    async def shares_of(self, media_id: int) -> list[tuple[bytes, int, int, int]]:
        """(key, chat id, seq, expires_at) of every recorded share of an item."""
        rows = await self.shares.scan_prefix(u64(media_id), limit=SCAN_LIMIT)
        return [(key, from_u64(key[8:16]), from_u64(key[16:24]), from_u64(value)) for key, value in rows]

    async def pending_of(self, media_id: int) -> list[tuple[bytes, int, int, int]]:
        """(key, chat id, started ms, floor seq) of every pending share of an item."""
        rows = await self.pending.scan_prefix(u64(media_id), limit=SCAN_LIMIT)
        return [(key, from_u64(key[8:16]), from_u64(key[16:24]), from_u64(value)) for key, value in rows]

    async def photo_chats(self, media_id: int) -> list[tuple[bytes, int]]:
        """(key, chat id) of every group the item was made the photo of."""
        rows = await self.photos.scan_prefix(u64(media_id), limit=SCAN_LIMIT)
        return [(key, from_u64(key[8:16])) for key, _ in rows]

    async def due_for_gc(self, now: int, limit: int) -> list[tuple[bytes, int]]:
        """(gc key, media id) of items due for a look at `now`, oldest first."""
        rows = await self.gc.scan(u64(0), u64(now + 1), limit=limit)
        return [(key, from_u64(key[8:16])) for key, _ in rows]

    async def old_pending(self, cutoff: int, limit: int = SCAN_LIMIT) -> list[tuple[bytes, int, int, int]]:
        """(key, media id, chat id, floor seq) of pending shares started at or before `cutoff`."""
        out = []
        for key, value in await self.pending.scan(limit=limit):
            if from_u64(key[16:24]) <= cutoff:
                out.append((key, from_u64(key[:8]), from_u64(key[8:16]), from_u64(value)))
        return out

    async def all_content(self) -> set[str]:
        """Every SHA-256 that has a content record."""
        out: set[str] = set()
        start = b""
        while True:
            rows = await self.content.scan(start, limit=10_000)
            out.update(key.hex() for key, _ in rows)
            if len(rows) < 10_000:
                return out
            start = rows[-1][0] + b"\x00"

    async def counts(self) -> dict[str, int]:
        return {name: await self.store.table(name).count() for name in TABLES}


def share_key(media_id: int, chat_id: int, seq: int) -> bytes:
    return u64(media_id) + u64(chat_id) + u64(seq)


def pending_key(media_id: int, chat_id: int, started: int) -> bytes:
    return u64(media_id) + u64(chat_id) + u64(started)


def gc_key(due: int, media_id: int) -> bytes:
    return u64(max(0, due)) + u64(media_id)


__all__ = ["CONTENT", "GC", "ITEMS", "PENDING", "PHOTOS", "SHARES", "TABLES", "Records", "StoreBatch", "gc_key",
           "pending_key", "public", "share_key"]
