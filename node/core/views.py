"""How chats look to a user: the summaries in the chat list and chat endpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .accounts import public_user
from .chatprefs import prefs_of
from .chats import is_expired, now_ms
from .former import left_entry, left_seq, members_at
from .profiles import add_photos
from .state import ChatState

if TYPE_CHECKING:
    from .services import Services


def shares_reads(record: dict[str, Any] | None) -> bool:
    """Whether a user (their record) shares read receipts: the `read_receipts` setting."""
    return bool(record is None or record.get("settings", {}).get("read_receipts", True))


def reads_visible(node: Services, viewer: int, user_id: int) -> bool:
    """Whether `viewer` may know how far `user_id` has read: themselves always, others only
    when both share read receipts (records loaded: `peek_user`). A user who turned read
    receipts off is never revealed, in any kind of chat, and sees no one's reads."""
    if viewer == user_id:
        return True
    return shares_reads(node.accounts.peek_user(viewer)) and shares_reads(node.accounts.peek_user(user_id))


async def frozen_view(node: Services, user_id: int, chat: ChatState) -> dict[str, Any] | None:
    """A former member's view of a group, as it was when they left (node/core/former.py);
    None for a current member."""
    seq = left_seq(chat, user_id)
    if seq is None or chat.kind != "group":
        return None
    snapshot = chat.members[user_id].get("left")
    if snapshot is None:  # left before snapshots were taken: what can still be told
        others = [m for uid, m in members_at(chat, seq) if uid != user_id]
        snapshot = {"title": chat.record.get("title", ""), "ttl": chat.record.get("ttl", 0), "members": len(others),
                    "last": await left_entry(node, chat, user_id),
                    "delivered": min((min(m["delivered"], seq) for m in others), default=0),
                    "read": min((min(m["read"], seq) for m in others), default=0)}
    return snapshot


async def chat_summary(node: Services, user_id: int, chat: ChatState, unread: int = 0) -> dict[str, Any]:
    """How a chat looks to `user_id` (loads the 1-1 peer's record if needed)."""
    peer_id = next((uid for uid in chat.members if uid != user_id), None) if chat.kind == "direct" else None
    await node.accounts.load_users((user_id,) if peer_id is None else (user_id, peer_id))
    summary = summary_of(node, user_id, chat, unread, await frozen_view(node, user_id, chat))
    if summary.get("peer"):
        await add_photos(node, user_id, [summary["peer"]])
    return summary


def summary_of(node: Services, user_id: int, chat: ChatState, unread: int = 0,
               frozen: dict[str, Any] | None = None) -> dict[str, Any]:
    """`chat_summary` for a chat whose 1-1 peer is already loaded (lists load them at once);
    `frozen`: a former member's view of the group (`frozen_view`)."""
    member = chat.members.get(user_id, {})
    summary: dict[str, Any] = {
        "id": str(chat.id),
        "kind": chat.kind,
        "created": chat.record["created"],
        "last_seq": chat.committed_seq,
        "from_seq": member.get("from_seq", 1),
        "read_seq": member.get("read", 0),
        "delivered_seq": member.get("delivered", 0),
        "hidden": bool(member.get("hidden")),
        "unread": unread,
        "last_message": chat.last_message if chat.last_message and not is_expired(chat.last_message, now_ms()) else None,
        "updated": chat.last_message["ts"] if chat.last_message else chat.record["created"],
    }
    if member.get("until_seq") is not None:
        summary["left_seq"] = member["until_seq"]
    if frozen is not None:  # nothing after the entry that ended the membership
        last = frozen["last"]
        summary["last_seq"] = min(chat.committed_seq, member["until_seq"])
        summary["last_message"] = last if last and not is_expired(last, now_ms()) else None
        summary["updated"] = last["ts"] if last else chat.record["created"]
    if chat.kind == "direct":
        peer_id = next((uid for uid in chat.members if uid != user_id), None)
        peer = node.accounts.peek_user(peer_id) if peer_id else None
        summary["peer"] = public_user(peer) if peer else None
        summary["title"] = summary["peer"]["display_name"] if peer else "unknown"
        peer_member = chat.members.get(peer_id, {}) if peer_id else {}
        # null where read receipts hide it (either of them turned them off)
        summary["peer_read_seq"] = peer_member.get("read", 0) if peer_id and reads_visible(node, user_id, peer_id) else None
        summary["peer_delivered_seq"] = peer_member.get("delivered", 0)
    elif frozen is not None:
        summary["title"] = frozen["title"]
        summary["role"] = member.get("role")
        summary["members"] = frozen["members"]
    else:
        summary["title"] = chat.record.get("title", "")
        summary["role"] = member.get("role")
        summary["members"] = len(chat.active_ids())
    summary["ttl"] = chat.record.get("ttl", 0) if frozen is None else frozen["ttl"]
    if chat.kind == "group":  # a group's photo is for its current members
        summary["photo"] = chat.record.get("photo") if frozen is None else None
    summary.update(prefs_of(member, now_ms()))
    return summary


async def chat_list(node: Services, user_id: int, *, include_hidden: bool = False) -> list[dict[str, Any]]:
    """The user's chats, pinned ones first, then the most recently active, with unread
    counts."""
    states = []
    for chat in await node.chats.chats_of(user_id):
        if chat.visible_range(user_id) is None:
            continue
        if chat.members[user_id].get("hidden") and not include_hidden:
            continue
        states.append(chat)
    peers = {uid for chat in states if chat.kind == "direct" for uid in chat.members if uid != user_id}
    await node.accounts.load_users(peers | {user_id})
    unread = await node.chats.unread_counts(user_id, states)
    summaries = [summary_of(node, user_id, chat, unread.get(chat.id, 0), await frozen_view(node, user_id, chat))
                 for chat in states]
    await add_photos(node, user_id, [s["peer"] for s in summaries if s.get("peer")])
    # Pinned chats first (the latest pin on top), then the most recently active.
    summaries.sort(key=lambda s: (s["pinned"] or 0, s["updated"]), reverse=True)
    return summaries


async def reads_shared(node: Services, user_id: int) -> bool:
    """Whether a user shares read receipts (a user setting; off also hides others' reads)."""
    return shares_reads(await node.accounts.user(user_id))


async def add_status(node: Services, user_id: int, chat: ChatState, messages: list[dict[str, Any]]) -> None:
    """Give the user's own messages a `status`: sent, delivered (every other member has it)
    or read (every other member read it: only when the user and every other member share
    read receipts, in 1-1 chats and groups alike, so no one who hides them is revealed).
    A former member sees the statuses of the moment they left."""
    frozen = await frozen_view(node, user_id, chat)
    if frozen is not None:
        left = left_seq(chat, user_id)
        assert left is not None  # a frozen view is a former member's
        others = [(uid, m) for uid, m in members_at(chat, left) if uid != user_id]
        if not others:
            return
        delivered = frozen["delivered"]
        await node.accounts.load_users([user_id, *(uid for uid, _ in others)])
        read = frozen["read"] if all(reads_visible(node, user_id, uid) for uid, _ in others) else 0
    else:
        others = [(uid, m) for uid, m in chat.members.items() if uid != user_id and m.get("until_seq") is None]
        if not others:
            return
        delivered = min(m["delivered"] for _, m in others)
        await node.accounts.load_users([user_id, *(uid for uid, _ in others)])
        read = min(m["read"] if reads_visible(node, user_id, uid) else 0 for uid, m in others)
    me = str(user_id)
    for message in messages:
        if message.get("from") == me:
            seq = message["seq"]
            message["status"] = "read" if read >= seq else "delivered" if delivered >= seq else "sent"
