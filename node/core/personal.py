"""A user's own marks on messages: stars, and messages deleted for them only.

Neither changes the chat for anyone else, so neither goes through the sequencer or the
log: they are small per-user records in the core's key-value namespaces (`_core/stars`:
user | chat | seq -> the message's time and id; `_core/hidden`: user | chat | seq), and
the user's devices are told with a `starred` or `deleted_for_me` event. History pages
mark starred messages and leave out hidden ones; so do replays, search and the starred
list, which also leaves out what was deleted for everyone, expired or is no longer
visible to the user.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from ..storage import Storage, WriteBatch
from .chats import CONTENT_KINDS, is_expired, now_ms
from .corekv import HIDDEN, SCAN_PAGE, STARS, ints, key
from .errors import ChatError, bad_request

if TYPE_CHECKING:
    from .services import Services
    from .state import ChatState

MAX_DELETE_FOR_ME = 100  # messages per request
MAX_STARS_LISTED = 10_000  # stars looked at for one page of the starred list


def _send_to_user(node: Services, user_id: int, event: dict[str, Any]) -> None:
    """To the user's other devices, on whichever nodes they are."""
    node.routing.send_to_users((user_id,), orjson.dumps(event))


async def _visible_entry(node: Services, user_id: int, chat_id: int, seq: int) -> tuple[ChatState, dict[str, Any]]:
    chat = await node.chats.load(chat_id)
    visible = chat.visible_range(user_id) if chat is not None else None
    if visible is None:
        raise ChatError("not_member")
    rows = await node.chats.read_range(chat_id, seq, seq, 1) if visible[0] <= seq <= visible[1] else []
    record = orjson.loads(rows[0][1]) if rows else None
    if record is None or is_expired(record, now_ms()):
        raise ChatError("not_found", "no such message in this chat")
    return chat, record


# -- stars -------------------------------------------------------------------------------


async def set_star(node: Services, user_id: int, chat_id: int, seq: int, starred: bool) -> None:
    """Star (or unstar) a message the user can see."""
    batch = WriteBatch()
    if starred:
        _chat, record = await _visible_entry(node, user_id, chat_id, seq)
        if record["kind"] not in CONTENT_KINDS:
            raise ChatError("not_found", "only messages can be starred")
        if await hidden_between(node.storage, user_id, chat_id, seq, seq):
            raise ChatError("not_found", "no such message in this chat")
        batch.kv_put(STARS, key(user_id, chat_id, seq), key(record["ts"], int(record["id"])))
    else:
        batch.kv_delete(STARS, key(user_id, chat_id, seq))
    await node.storage.write(batch)
    _send_to_user(node, user_id, {"type": "starred", "chat": str(chat_id), "seq": seq, "starred": starred})


async def starred_between(storage: Storage, user_id: int, chat_id: int, first: int, last: int) -> set[int]:
    """The seqs the user starred in a chat, first <= seq <= last."""
    return await _seqs(storage, STARS, user_id, chat_id, first, last)


async def starred_list(node: Services, user_id: int, offset: int, limit: int) -> dict[str, Any]:
    """The user's starred messages, the newest message first: those still stored, not
    expired, visible to the user and not deleted for them."""
    stars: list[tuple[int, int, int, int]] = []  # (ts, chat, seq, message id)
    start, end = key(user_id), key(user_id + 1)
    while len(stars) < MAX_STARS_LISTED:
        rows = await node.storage.kv_scan(STARS, start, end, SCAN_PAGE)
        for raw_key, value in rows:
            _user, chat_id, seq = ints(raw_key)
            ts, message_id = ints(value)
            stars.append((ts, chat_id, seq, message_id))
        if len(rows) < SCAN_PAGE:
            break
        start = rows[-1][0] + b"\x00"
    stars.sort(reverse=True)
    found = await node.storage.find_messages([s[3] for s in stars[offset:offset + limit * 2 + 10]])
    chats = await node.chats.load_many({s[1] for s in stars[offset:offset + limit * 2 + 10]})
    out: list[dict[str, Any]] = []
    now = now_ms()
    taken = 0
    for ts, chat_id, seq, message_id in stars[offset:]:
        if len(out) == limit:
            break
        taken += 1
        stored = found.get(message_id)
        chat = chats.get(chat_id)
        visible = chat.visible_range(user_id) if chat is not None else None
        if stored is None or visible is None or not visible[0] <= seq <= visible[1]:
            continue
        record = orjson.loads(stored.raw)
        if record["kind"] not in CONTENT_KINDS or is_expired(record, now):
            continue
        if await hidden_between(node.storage, user_id, chat_id, seq, seq):
            continue
        record["starred"] = True
        out.append(record)
    return {"messages": out, "next_offset": offset + taken, "has_more": offset + taken < len(stars)}


# -- deleted for me ----------------------------------------------------------------------


async def delete_for_me(node: Services, user_id: int, chat_id: int, seqs: list[int]) -> None:
    """Hide messages from the user's own view of a chat (their stars go too)."""
    if not seqs or len(seqs) > MAX_DELETE_FOR_ME:
        raise bad_request(f"give 'seqs': 1 to {MAX_DELETE_FOR_ME} message seqs")
    chat = await node.chats.load(chat_id)
    visible = chat.visible_range(user_id) if chat is not None else None
    if visible is None:
        raise ChatError("not_member")
    batch = WriteBatch()
    for seq in sorted(set(seqs)):
        rows = await node.chats.read_range(chat_id, seq, seq, 1) if visible[0] <= seq <= visible[1] else []
        record = orjson.loads(rows[0][1]) if rows else None
        if record is None or record["kind"] not in CONTENT_KINDS | {"deleted"}:
            raise ChatError("not_found", f"no message {seq} in this chat")
        batch.kv_put(HIDDEN, key(user_id, chat_id, seq), b"")
        batch.kv_delete(STARS, key(user_id, chat_id, seq))
    await node.storage.write(batch)
    _send_to_user(node, user_id, {"type": "deleted_for_me", "chat": str(chat_id), "seqs": sorted(set(seqs))})


async def hidden_between(storage: Storage, user_id: int, chat_id: int, first: int, last: int) -> set[int]:
    """The seqs the user deleted for themselves in a chat, first <= seq <= last."""
    return await _seqs(storage, HIDDEN, user_id, chat_id, first, last)


async def _seqs(storage: Storage, namespace: str, user_id: int, chat_id: int, first: int, last: int) -> set[int]:
    if last < first:
        return set()
    start, end = key(user_id, chat_id, first), key(user_id, chat_id, last + 1)
    out: set[int] = set()
    while True:
        rows = await storage.kv_scan(namespace, start, end, SCAN_PAGE)
        out.update(ints(raw_key)[2] for raw_key, _ in rows)
        if len(rows) < SCAN_PAGE:
            return out
        start = rows[-1][0] + b"\x00"
