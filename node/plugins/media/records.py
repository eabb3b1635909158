"""The media plugin's tables (in its own store, on whichever engine the node runs).

    items    u64 media id                      -> item (JSON, see `public`)
    refs     sha256 (32 bytes) | u64 media id  -> b"" (this item uses this content)
    shares   u64 media | u64 chat | u64 seq    -> u64 expires_at ms (0: never)
    pending  u64 media | u64 chat | u64 ms     -> u64 chat seq when the send began
    gc       u64 due ms | u64 media id         -> b"" (look at this item then)
    photos   u64 media | u64 chat               -> b"" (the item was made that group's photo)
    dooms    target | u64 node | u64 ms        -> state byte + u64 ms (a deletion under way)
    lease    b"gc"                             -> {"node", "until"} (who collects)
    keys     name | u64 order | u64 node       -> a key candidate (the signing key)
    owned    u64 owner | u64 media id          -> u64 stored size (for the owner's quota)

An *item* is one upload by one user. Its bytes live in the content store under their
SHA-256, shared by every item with the same bytes; `refs` has one row per item that uses
a content (rows, not a counter: nodes of a cluster add and remove them without reading
each other's), and the content goes when it has no row left. A *share* is a stored
message that carries the item; a *pending* share is a send that passed the gate and may
not be stored yet. The chat logs stay the truth: shares are checked against them before
they count. A *doom* is a collector's notice that it is deleting an item (target
b"i" + u64 id) or a content (b"c" + sha256); see service.py.

Older versions kept a counter per content in `content` (sha256 -> {"items", ...});
`migrate` turns it into `refs` rows. They had no `owned` rows either: `migrate` makes
them from the items.
"""

from __future__ import annotations

from typing import Any

import orjson

from ... import PluginStore, StoreBatch

ITEMS = "items"
REFS = "refs"
SHARES = "shares"
PENDING = "pending"
GC = "gc"
PHOTOS = "photos"
DOOMS = "dooms"
LEASE = "lease"
KEYS = "keys"
OWNED = "owned"
OLD_CONTENT = "content"  # the refcounts of older versions (migrated to REFS)
TABLES = [ITEMS, REFS, SHARES, PENDING, GC, PHOTOS, DOOMS, OWNED]

#: States of a doom row.
DELETING, DONE, CANCELLED = b"d", b"x", b"c"

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
        self.refs = store.table(REFS)
        self.dooms = store.table(DOOMS)
        self.shares = store.table(SHARES)
        self.pending = store.table(PENDING)
        self.gc = store.table(GC)
        self.photos = store.table(PHOTOS)
        self.owned = store.table(OWNED)

    async def get_item(self, media_id: int) -> dict[str, Any] | None:
        raw = await self.items.get(u64(media_id))
        return orjson.loads(raw) if raw is not None else None

    async def refs_of(self, sha: str, limit: int = SCAN_LIMIT) -> list[int]:
        """The media ids of the items that use a content."""
        return [from_u64(key[32:]) for key, _ in await self.refs.scan_prefix(bytes.fromhex(sha), limit=limit)]

    async def owned_by(self, owner: int, limit: int = SCAN_LIMIT) -> tuple[int, int]:
        """(bytes, items) of the uploads `owner` keeps (at most `limit` items counted)."""
        rows = await self.owned.scan_prefix(u64(owner), limit=limit)
        return sum(from_u64(value) for _, value in rows), len(rows)

    async def dooms_of(self, target: bytes) -> list[tuple[bytes, int, int, bytes, int]]:
        """(key, node, started ms, state, state ms) of the deletions noted for a target, or
        of every target for b"". Keys end with the node and the start (targets differ in
        length), so they are read from the end."""
        rows = await self.dooms.scan_prefix(target)
        return [(key, from_u64(key[-16:-8]), from_u64(key[-8:]), value[:1], from_u64(value[1:9]))
                for key, value in rows]

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

    async def all_rows(self, table: str, page: int = 10_000) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        start = b""
        while True:
            rows = await self.store.table(table).scan(start, limit=page)
            out.extend(rows)
            if len(rows) < page:
                return out
            start = rows[-1][0] + b"\x00"

    async def migrate(self) -> int:
        """Bring the tables of older versions up to date (idempotent: two nodes doing it
        at once write the same rows). Returns the items migrated."""
        return await self._migrate_refs() + await self._migrate_owned()

    async def _migrate_owned(self) -> int:
        """Items from before `owned` was kept get their row (every item has one, written
        with it: so no rows at all, but items, means an older version wrote them)."""
        if await self.owned.scan(limit=1) or not await self.items.scan(limit=1):
            return 0
        rows = await self.all_rows(ITEMS)
        for start in range(0, len(rows), 1000):
            batch = self.store.batch()
            for key, value in rows[start:start + 1000]:
                item = orjson.loads(value)
                batch.put(OWNED, owned_key(int(item["owner"]), from_u64(key)), u64(item["size"]))
            await self.store.write(batch)
        return len(rows)

    async def _migrate_refs(self) -> int:
        """Turn the content counters of older versions into `refs` rows."""
        old = self.store.table(OLD_CONTENT)
        if not await old.scan(limit=1):
            return 0
        migrated = 0
        for key, value in await self.all_rows(ITEMS):
            item = orjson.loads(value)
            batch = self.store.batch()
            batch.put(REFS, bytes.fromhex(item["sha256"]) + key, b"")
            await self.store.write(batch)
            migrated += 1
        batch = self.store.batch()
        for key, _ in await self.all_rows(OLD_CONTENT):
            batch.delete(OLD_CONTENT, key)
        await self.store.write(batch)
        return migrated

    async def counts(self) -> dict[str, int]:
        return {name: await self.store.table(name).count() for name in TABLES}


def share_key(media_id: int, chat_id: int, seq: int) -> bytes:
    return u64(media_id) + u64(chat_id) + u64(seq)


def pending_key(media_id: int, chat_id: int, started: int) -> bytes:
    return u64(media_id) + u64(chat_id) + u64(started)


def gc_key(due: int, media_id: int) -> bytes:
    return u64(max(0, due)) + u64(media_id)


def ref_key(sha: str, media_id: int) -> bytes:
    return bytes.fromhex(sha) + u64(media_id)


def owned_key(owner: int, media_id: int) -> bytes:
    return u64(owner) + u64(media_id)


def item_target(media_id: int) -> bytes:
    return b"i" + u64(media_id)


def content_target(sha: str) -> bytes:
    return b"c" + bytes.fromhex(sha)


__all__ = ["DOOMS", "GC", "ITEMS", "LEASE", "OWNED", "PENDING", "PHOTOS", "REFS", "SHARES", "TABLES", "Records",
           "StoreBatch", "content_target", "gc_key", "item_target", "owned_key", "pending_key", "public", "ref_key",
           "share_key"]
