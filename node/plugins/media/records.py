"""The media plugin's LMDB databases and their key layout.

    media_items    u64 media id                      -> item (JSON, see `public`)
    media_content  sha256 (32 bytes)                 -> {"items": n, "size", "mime"} (refcount)
    media_shares   u64 media | u64 chat | u64 seq    -> u64 expires_at ms (0: never)
    media_pending  u64 media | u64 chat | u64 ms     -> u64 chat seq when the send began
    media_gc       u64 due ms | u64 media id         -> b"" (look at this item then)

An *item* is one upload by one user. Its bytes live in the content store under their
SHA-256, shared by every item with the same bytes; `media_content` counts those items
and the file goes when the count reaches 0. A *share* is a stored message that carries
the item; a *pending* share is a send that passed the gate and may not be stored yet.
The chat logs stay the truth: shares are checked against them before they count.
"""

from __future__ import annotations

from typing import Any

import orjson

from ...storage.keys import from_u64, pair, prefix_end, u64

ITEMS = "media_items"
CONTENT = "media_content"
SHARES = "media_shares"
PENDING = "media_pending"
GC = "media_gc"
DATABASES = [ITEMS, CONTENT, SHARES, PENDING, GC]

#: Item fields that messages and `GET /api/media/{id}/info` show.
PUBLIC_FIELDS = ("id", "mime", "size", "name", "width", "height", "duration", "thumbnail")


def public(item: dict[str, Any]) -> dict[str, Any]:
    return {k: item[k] for k in PUBLIC_FIELDS if k in item}


def get_item(storage: Any, media_id: int) -> dict[str, Any] | None:
    raw = storage.get(ITEMS, u64(media_id))
    return orjson.loads(raw) if raw is not None else None


def get_content(storage: Any, sha: str) -> dict[str, Any] | None:
    raw = storage.get(CONTENT, bytes.fromhex(sha))
    return orjson.loads(raw) if raw is not None else None


def shares_of(storage: Any, media_id: int) -> list[tuple[bytes, int, int, int]]:
    """(key, chat id, seq, expires_at) of every recorded share of an item."""
    prefix = u64(media_id)
    with storage.read() as txn:
        return [
            (bytes(key), *_two(key[8:24]), from_u64(value))
            for key, value in storage.scan(txn, SHARES, prefix, prefix_end(prefix))
        ]


def pending_of(storage: Any, media_id: int) -> list[tuple[bytes, int, int, int]]:
    """(key, chat id, started ms, floor seq) of every pending share of an item."""
    prefix = u64(media_id)
    with storage.read() as txn:
        return [
            (bytes(key), *_two(key[8:24]), from_u64(value))
            for key, value in storage.scan(txn, PENDING, prefix, prefix_end(prefix))
        ]


def _two(raw: bytes) -> tuple[int, int]:
    return from_u64(raw[:8]), from_u64(raw[8:16])


def share_key(media_id: int, chat_id: int, seq: int) -> bytes:
    return u64(media_id) + pair(chat_id, seq)


def pending_key(media_id: int, chat_id: int, started: int) -> bytes:
    return u64(media_id) + pair(chat_id, started)


def gc_key(due: int, media_id: int) -> bytes:
    return pair(max(0, due), media_id)


def due_for_gc(txn: Any, storage: Any, now: int, limit: int) -> list[tuple[bytes, int]]:
    """(gc key, media id) of items due for a look at `now`, oldest first. In a thread."""
    return [(bytes(key), from_u64(key[8:16])) for key, _ in storage.scan(txn, GC, u64(0), u64(now + 1), limit=limit)]


def old_pending(txn: Any, storage: Any, cutoff: int) -> list[tuple[bytes, int, int, int]]:
    """(key, media id, chat id, floor seq) of pending shares started at or before `cutoff`. In a thread."""
    out = []
    for key, value in storage.scan(txn, PENDING, b"", b"\xff" * 25):
        if from_u64(key[16:24]) <= cutoff:
            out.append((bytes(key), from_u64(key[:8]), from_u64(key[8:16]), from_u64(value)))
    return out


def all_content(txn: Any, storage: Any) -> set[str]:
    """Every SHA-256 that has a content record. In a thread."""
    cursor = txn.cursor(db=storage.handles[CONTENT])
    return {bytes(key).hex() for key in cursor.iternext(keys=True, values=False)}


def counts(txn: Any, storage: Any) -> dict[str, int]:
    return {name: txn.stat(storage.handles[name])["entries"] for name in DATABASES}
