"""Searching messages: full text over the chats a user can read, and history around a
message (to show a result in its context).

The engine does the matching (`Storage.search_messages`: PostgreSQL's own full-text
search; SQLite FTS5 beside LMDB, node/storage/fts.py); this module decides what may be
searched: per chat, the user's visible range (membership, from `from_seq` to `until_seq`,
and not what they cleared), never expired entries, and not what they deleted for
themselves. A query is split into words (letters and digits); a message matches when its
text or caption holds every word, as a word or the start of one, case and (on LMDB)
accents aside.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import orjson

from .chats import CONTENT_KINDS, is_expired, now_ms
from .errors import ChatError, bad_request
from .personal import hidden_between

if TYPE_CHECKING:
    from .services import Services

MAX_QUERY = 200  # characters
MAX_TERMS = 8
WORD = re.compile(r"[^\W_]+")


def terms_of(query: object) -> list[str]:
    if not isinstance(query, str) or len(query) > MAX_QUERY:
        raise bad_request(f"'q' must be text of at most {MAX_QUERY} characters")
    terms = list(dict.fromkeys(w.lower() for w in WORD.findall(query)))[:MAX_TERMS]
    if not terms:
        raise bad_request("'q' must hold at least one word (letters or digits)")
    return terms


def parse_cursor(raw: str | None) -> tuple[int, int, int] | None:
    if not raw:
        return None
    parts = raw.split(".")
    if len(parts) != 3 or not all(p.isdigit() and len(p) <= 20 for p in parts):
        raise bad_request("'before' must be the 'next' of an earlier page")
    ts, chat, seq = (int(p) for p in parts)
    return ts, chat, seq


async def search(node: Services, user_id: int, query: object, *, chat_id: int | None = None, limit: int = 20,
                 before: str | None = None) -> dict[str, Any]:
    """Messages matching `query`, the newest first: ``{"results": [{"chat", "message"}],
    "next": cursor or None, "complete": false while the index is being built}``."""
    terms = terms_of(query)
    cursor = parse_cursor(before)
    if chat_id is not None:
        chat = await node.chats.load(chat_id)
        chats = [chat] if chat is not None else []
        if chat is None or chat.visible_range(user_id) is None:
            raise ChatError("not_member")
    else:
        chats = await node.chats.chats_of(user_id)
    ranges = []
    for chat in chats:
        visible = chat.visible_range(user_id)
        if visible is not None and visible[0] <= visible[1]:
            ranges.append((chat.id, visible[0], visible[1]))
    results: list[dict[str, Any]] = []
    now = now_ms()
    next_cursor = None
    while ranges and len(results) < limit:
        rows = await node.storage.search_messages(terms, ranges, now, limit + 1, cursor)
        for found_chat, seq, raw in rows[:limit]:
            record = orjson.loads(raw)
            cursor = (record["ts"], found_chat, seq)
            if record["kind"] not in CONTENT_KINDS or is_expired(record, now) or not record.get("text"):
                continue
            if await hidden_between(node.storage, user_id, found_chat, seq, seq):
                continue
            results.append({"chat": str(found_chat), "message": record})
            if len(results) == limit:
                break
        if len(rows) <= limit or cursor is None:  # (more rows than `limit`: `cursor` is set)
            next_cursor = None
            break
        next_cursor = ".".join(str(n) for n in cursor)
        if len(results) == limit:
            break
    return {"results": results, "next": next_cursor, "complete": node.storage.search_ready()}


async def history_around(node: Services, user_id: int, chat_id: int, seq: int, limit: int) -> dict[str, Any]:
    """Up to `limit` visible messages around `seq` (half before it, it, and the rest after),
    oldest first, with whether older (`has_more`) and newer (`has_newer`) ones exist."""
    chat = await node.chats.load(chat_id)
    visible = chat.visible_range(user_id) if chat is not None else None
    if visible is None:
        raise ChatError("not_member")
    first, last = visible
    if first > last:  # nothing to see (a history cleared up to its last entry)
        return {"messages": [], "has_more": False, "has_newer": False, "next_before": None}
    center = min(max(seq, first), last)
    half = limit // 2
    older = await node.storage.read_messages(chat_id, first, center, half + 1, reverse=True)  # one more: any older?
    has_more = len(older) > half
    older = older[:half]
    newer = await node.storage.read_messages(chat_id, center, last + 1, limit - len(older) + 1)
    now = now_ms()
    rows = list(reversed(older)) + newer
    messages = [m for m in (orjson.loads(raw) for _, raw in rows[:limit]) if not is_expired(m, now)]
    return {
        "messages": messages,
        "has_more": has_more,
        "has_newer": len(rows) > limit,
        "next_before": rows[0][0] if rows else None,
    }
