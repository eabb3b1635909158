"""Reports: a user reports another user or a chat to the node's admins.

A report keeps who reported whom (or which chat), why, when, and a copy of the last
messages the reported user (or, for a group, anyone but the reporter) sent that the
reporter could see: as WhatsApp does, the admins see what was reported without anyone
reading the rest of the chat. Reports live in the core's `_core/reports` namespace,
newest id last; admins list and dismiss them over the admin API (docs/protocol.md,
"Reports").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from ..storage import WriteBatch
from .accounts import public_user
from .chats import CONTENT_KINDS, is_expired, now_ms
from .corekv import REPORTS, key
from .errors import ChatError, bad_request
from .snowflake import parse_id

if TYPE_CHECKING:
    from .services import Services

REPORT_FIELDS = frozenset({"user", "chat", "reason", "block"})
MAX_REASON = 1000  # characters
REPORTED_MESSAGES = 5  # messages copied into a report
SCAN_LIMIT = 1000  # log entries looked through for them


def _id(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    try:
        return parse_id(value)
    except (ValueError, TypeError):
        raise bad_request(f"'{field}' must be an id") from None


async def file_report(node: Services, reporter: int, body: dict[str, Any]) -> dict[str, Any]:
    """Store a report (`POST /api/reports`); with `block`, also block the reported user."""
    unknown = body.keys() - REPORT_FIELDS
    if unknown:
        raise bad_request(f"unknown field(s): {', '.join(sorted(unknown))}")
    user_id, chat_id = _id(body, "user"), _id(body, "chat")
    if user_id is None and chat_id is None:
        raise bad_request("give 'user' (a user id), 'chat' (a chat id) or both")
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise bad_request(f"'reason' must be text of at most {MAX_REASON} characters")
    block = body.get("block", False)
    if not isinstance(block, bool):
        raise bad_request("'block' must be true or false")
    if block and user_id is None:
        raise bad_request("'block' needs 'user'")
    if user_id is not None and (user_id == reporter or await node.accounts.user(user_id) is None):
        raise ChatError("not_found", "no such user")
    if chat_id is None and user_id is not None:  # a person: what they wrote in the 1-1 chat, if any
        low, high = sorted((reporter, user_id))
        chat_id = (await node.storage.direct_chats([(low, high)])).get((low, high))
        explicit_chat = False
    else:
        explicit_chat = True
    chat = await node.chats.load(chat_id) if chat_id is not None else None
    visible = chat.visible_range(reporter) if chat is not None else None
    if explicit_chat and (chat is None or visible is None):
        raise ChatError("not_member")
    if explicit_chat and chat is not None and user_id is not None and user_id not in chat.members:
        raise bad_request("the user reported is not a member of that chat")
    messages = await _last_messages(node, chat.id, visible, reporter, user_id) if chat is not None and visible else []
    now = now_ms()
    report_id = node.chats.ids.next_id()
    report = {
        "id": str(report_id), "created": now, "reporter": str(reporter),
        "user": str(user_id) if user_id is not None else None,
        "chat": str(chat_id) if explicit_chat or messages else None,
        "chat_kind": chat.kind if chat is not None and (explicit_chat or messages) else None,
        "reason": reason.strip(), "messages": messages,
    }
    batch = WriteBatch()
    batch.kv_put(REPORTS, key(report_id), orjson.dumps(report))
    await node.storage.write(batch)
    if block and user_id is not None:  # (`block` without `user` was refused above)
        await node.blocks.set(reporter, user_id, True)
    return {"id": report["id"], "created": now, "messages": len(messages)}


async def _last_messages(node: Services, chat_id: int, visible: tuple[int, int], reporter: int,
                         user_id: int | None) -> list[dict[str, Any]]:
    """The newest content messages the reported user (or anyone but the reporter) sent,
    within what the reporter may see, oldest first."""
    first, last = visible
    found: list[dict[str, Any]] = []
    end, scanned, now = last + 1, 0, now_ms()
    while end > first and scanned < SCAN_LIMIT and len(found) < REPORTED_MESSAGES:
        rows = await node.storage.read_messages(chat_id, first, end, 200, reverse=True)
        if not rows:
            break
        for _seq, raw in rows:
            record = orjson.loads(raw)
            sender = record.get("from")
            if record["kind"] not in CONTENT_KINDS or is_expired(record, now) or not sender:
                continue
            if (user_id is not None and sender == str(user_id)) or (user_id is None and sender != str(reporter)):
                found.append(record)
                if len(found) == REPORTED_MESSAGES:
                    break
        scanned += len(rows)
        end = rows[-1][0]
    found.reverse()
    return found


async def list_reports(node: Services, before: int | None, limit: int) -> dict[str, Any]:
    """Reports, newest first (admin API), with the users they name."""
    end = key(before) if before is not None else None
    rows = await node.storage.kv_scan(REPORTS, b"", end, limit + 1, reverse=True)
    reports = [orjson.loads(value) for _, value in rows[:limit]]
    ids = {int(r[f]) for r in reports for f in ("reporter", "user") if r.get(f)}
    users = await node.accounts.load_users(ids)
    return {
        "reports": reports,
        "users": {str(uid): public_user(record) for uid, record in users.items()},
        "has_more": len(rows) > limit,
    }


async def dismiss_report(node: Services, report_id: int) -> None:
    if not (await node.storage.kv_get(REPORTS, [key(report_id)])):
        raise ChatError("not_found", "no such report")
    batch = WriteBatch()
    batch.kv_delete(REPORTS, key(report_id))
    await node.storage.write(batch)
