"""Operations on messages and cursors, applied by the sequencer (see chats.py).

Messages: send (text and media), edit, delete for everyone, replies, disappearing
messages; cursors: delivered and read; 1-1 chats: open, hide; the expiry purge.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs

from ..storage import WriteBatch
from .chatprefs import announce_prefs
from .chats import CONTENT_KINDS, Awaitable, Chats, Effect, Operation, Reads, is_expired
from .errors import ChatError
from .reactions import forget_reactions
from .state import ChatState


def message_reads(reads: Reads, chat_id: int, content: dict[str, Any]) -> None:
    """What storing a message of this content reads: its chat (and, for a 1-1 chat, who
    blocks whom: loaded with the chat's members) and the message it targets or replies to."""
    reads.chats.add(chat_id)
    for field in ("target", "reply_to"):
        if content.get(field) is not None:
            reads.messages.add(int(content[field]))


def store_message(
    chats: Chats, batch: WriteBatch, now: int, sender: int, chat_id: int, content: dict[str, Any],
    client_msg_id: str | None,
) -> tuple[ChatState, dict[str, Any], bytes]:
    """Validate and append one message of any client kind. Raises ChatError first."""
    chat, member = chats.require_chat(chat_id, sender)
    if chat.kind == "direct":
        peer = next((uid for uid in chat.members if uid != sender), 0)
        if chats.blocks.either(sender, peer):  # both members' blocks come with the chat
            raise ChatError("blocked")
    content = dict(content)
    kind = content["kind"]
    if kind == "edit":
        content = _edit(chats, batch, chat, sender, member, content, now)
    elif kind == "delete":
        content = _delete(chats, batch, chat, sender, member, content, now)
    else:
        mentions = content.get("mentions")
        if mentions is not None:
            if chat.kind != "group":
                raise ChatError("bad_request", "mentions are for groups")
            if any(chat.member(int(uid)) is None for uid in mentions):
                raise ChatError("bad_request", "'mentions' names someone who is not a member of this group")
            if not mentions:
                del content["mentions"]
        reply_to = content.get("reply_to")
        if reply_to is not None:
            content["reply_to_seq"] = _target(chats, chat, member, {"target": reply_to}, now)["seq"]
        ttl = content.pop("ttl", None)
        ttl = chat.record.get("ttl", 0) if ttl is None else ttl
        if ttl:
            content["expires_at"] = now + ttl * 1000
    record, raw = chats.append(chat, batch, now, sender, content, client_msg_id=client_msg_id)
    return chat, record, raw


def _target(chats: Chats, chat: ChatState, member: dict[str, Any], content: dict[str, Any], now: int) -> dict[str, Any]:
    """The message an edit, a deletion or a reply is about: one the member can see (from the entry
    that added them, not what they cleared, not expired): no one acts on messages from
    before they joined, admins included."""
    target = chats.find_message(chat, int(content["target"]))
    first = max(member["from_seq"], member.get("cleared_seq", 0) + 1)
    if target is None or target["kind"] not in CONTENT_KINDS or target["seq"] < first or is_expired(target, now):
        raise ChatError("not_found", "no such message in this chat")
    return target


def _edit(chats: Chats, batch: WriteBatch, chat: ChatState, sender: int, member: dict, content: dict,
          now: int) -> dict:
    target = _target(chats, chat, member, content, now)
    if target["from"] != str(sender):
        raise ChatError("forbidden", "only the sender may edit a message")
    if target["kind"] != "text" and "text" not in target:
        raise ChatError("bad_request", "only text and captions can be edited")
    if now - target["ts"] > chats.edit_window_ms:
        raise ChatError("edit_window_passed")
    target = {**target, "text": content["text"], "edited": now}
    chats.rewrite(chat, batch, target)
    edit = {"kind": "edit", "target": target["id"], "target_seq": target["seq"], "text": content["text"]}
    if target.get("expires_at"):
        edit["expires_at"] = target["expires_at"]  # the new text disappears with the message
    return edit


def _delete(chats: Chats, batch: WriteBatch, chat: ChatState, sender: int, member: dict, content: dict,
            now: int) -> dict:
    target = _target(chats, chat, member, content, now)
    if target["from"] != str(sender) and not (chat.kind == "group" and member["role"] == "admin"):
        raise ChatError("forbidden", "only the sender or a group admin may delete a message")
    # The content is gone from storage; what remains says only that there was a message.
    tombstone = {k: target[k] for k in ("id", "chat", "seq", "from", "ts")}
    tombstone.update(kind="deleted", deleted_by=str(sender))
    if target.get("media"):
        tombstone["deleted_media"] = target["media"].get("id")  # lets the media plugin release it
    delete = {"kind": "delete", "target": target["id"], "target_seq": target["seq"]}
    if target.get("expires_at"):  # a disappearing message: what remains of it disappears with it
        tombstone["expires_at"] = delete["expires_at"] = target["expires_at"]
    chats.rewrite(chat, batch, tombstone)
    forget_reactions(batch, chat.id, target["seq"])
    return delete


def unmark_unread(chats: Chats, chat: ChatState, user_id: int, now: int) -> Effect | None:
    """Clear a chat's "marked as unread" for a member; the effect tells their devices."""
    member = chat.members[user_id]
    if not member.get("marked_unread"):
        return None
    member["marked_unread"] = False
    chats.mark_dirty(chat.id, user_id)

    def effect() -> None:
        announce_prefs(chats, chat, user_id, now)

    return effect


def _read_advance(chats: Chats, chat: ChatState, user_id: int, old_read: int, record: dict) -> None:
    """Sending reads what came before: tell plugins when that passed others' messages."""
    if old_read < record["seq"] - 1:
        chats.plugins.notify("on_read", chat_id=chat.id, user_id=user_id, seq=record["seq"], previous=old_read)


class SendOrigin(Protocol):
    """Who sent a `SendMessage` and hears its outcome: the device's session, or (in a
    cluster) a stand-in that answers the node the device is connected to."""

    user_id: int

    def finish_send(self) -> None: ...

    def send_ack(self, client_msg_id: str, record: dict[str, Any], *, pending: bool = False,
                 duplicate: bool = False) -> None: ...

    def send_error(self, exc: ChatError, *, ref: str | None = None) -> None: ...


@attrs.define(eq=False)
class SendMessage(Operation):
    """A message from a connected device (`send` event): content, edit or delete."""

    origin: SendOrigin
    chat_id: int
    client_msg_id: str
    content: dict[str, Any] = attrs.field(repr=False)  # validated by the protocol layer and the gate; not logged

    def reads(self, reads: Reads) -> None:
        reads.dedupe.add((self.origin.user_id, self.client_msg_id))
        message_reads(reads, self.chat_id, self.content)

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        sender = self.origin.user_id
        previous = chats.find_duplicate(sender, self.client_msg_id)
        if previous is not None:

            def ack_again() -> None:
                self.origin.finish_send()
                self.origin.send_ack(self.client_msg_id, previous, duplicate=True)

            return ack_again
        chat = chats.get(self.chat_id)
        old_read = chat.members.get(sender, {}).get("read", 0) if chat else 0
        chat, record, raw = store_message(chats, batch, now, sender, self.chat_id, self.content, self.client_msg_id)
        chats.remember_dedupe(batch, sender, self.client_msg_id, record)

        def effect() -> None:
            self.origin.finish_send()
            offline = chats.fan_out(chat, record, raw, exclude=self.origin)
            self.origin.send_ack(self.client_msg_id, record, pending=bool(offline))
            _read_advance(chats, chat, sender, old_read, record)

        return effect

    def reject(self, error: ChatError) -> None:
        self.origin.finish_send()
        self.origin.send_error(error, ref=self.client_msg_id)


@attrs.define(eq=False)
class PostMessage(Awaitable):
    """A message posted by a plugin or bot on behalf of a user; resolves to the record."""

    user_id: int = 0
    chat_id: int = 0
    content: dict[str, Any] = attrs.field(factory=dict, repr=False)  # not logged

    def reads(self, reads: Reads) -> None:
        message_reads(reads, self.chat_id, self.content)

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        chat, record, raw = store_message(chats, batch, now, self.user_id, self.chat_id, self.content, None)

        def effect() -> None:
            chats.fan_out(chat, record, raw)
            self.resolve(record)

        return effect


@attrs.define(eq=False)
class MarkDelivered(Operation):
    """A device acknowledged receipt of everything up to `seq` in a chat (cumulative).

    Deferrable: the cursor is stored with the next commit (or within CURSOR_LINGER); a
    crash may set it back, and the device's next `received` raises it again."""

    deferrable = True
    user_id: int
    chat_id: int
    seq: int

    def reads(self, reads: Reads) -> None:
        reads.chats.add(self.chat_id)

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        chat = chats.get(self.chat_id)
        if chat is None or chat.member(self.user_id) is None:
            return None  # not worth an error: acks race with leaving chats
        moved = chats.advance_cursor(chat, self.user_id, "delivered", min(self.seq, chat.committed_seq))
        if moved is None:
            return None
        old, seq = moved

        def effect() -> None:
            chats.announce_delivered(chat, self.user_id, old, seq)
            chats.plugins.notify("on_delivered", chat_id=chat.id, user_id=self.user_id, seq=seq, previous=old)

        return effect

    def reject(self, error: ChatError) -> None:
        pass


@attrs.define(eq=False)
class MarkRead(Awaitable):
    """The user has read everything up to `seq` in a chat (cumulative, implies delivered)."""

    user_id: int = 0
    chat_id: int = 0
    seq: int = 0

    def reads(self, reads: Reads) -> None:
        reads.chats.add(self.chat_id)

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        chat, member = chats.require_chat(self.chat_id, self.user_id)
        seq = min(self.seq, chat.committed_seq)
        unmark = unmark_unread(chats, chat, self.user_id, now)  # reading clears "mark as unread"
        read = chats.advance_cursor(chat, self.user_id, "read", seq)
        if read is None:

            def resolve() -> None:
                if unmark is not None:
                    unmark()
                self.resolve(member["read"])

            return resolve
        delivered = chats.advance_cursor(chat, self.user_id, "delivered", seq)

        def effect() -> None:
            if unmark is not None:
                unmark()
            if delivered is not None:
                chats.announce_delivered(chat, self.user_id, delivered[0], seq)
                chats.plugins.notify("on_delivered", chat_id=chat.id, user_id=self.user_id, seq=seq,
                                     previous=delivered[0])
            chats.plugins.notify("on_read", chat_id=chat.id, user_id=self.user_id, seq=seq, previous=read[0])
            self.resolve(seq)

        return effect


@attrs.define(eq=False)
class OpenDirect(Awaitable):
    """Get or create the 1-1 chat between two users."""

    user_id: int = 0
    peer_id: int = 0
    chat_id: int = 0  # chosen by `route`: the existing chat, or the id of a new one

    def reads(self, reads: Reads) -> None:
        low, high = sorted((self.user_id, self.peer_id))
        reads.directs.add((low, high))
        reads.users.add(self.peer_id)

    async def route(self, chats: Chats) -> None:
        if not self.chat_id:
            low, high = sorted((self.user_id, self.peer_id))
            found = await chats.storage.direct_chats([(low, high)])
            self.chat_id = found.get((low, high)) or chats.ids.next_id()

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        if self.user_id == self.peer_id:
            raise ChatError("bad_request", "you cannot open a chat with yourself")
        low, high = sorted((self.user_id, self.peer_id))
        existing = chats.direct_chat_id(low, high)
        if existing is not None:
            chat = chats.get(existing)
            assert chat is not None  # loaded with the pair (Chats._load)
            member = chat.members[self.user_id]
            if member.get("hidden"):
                member["hidden"] = False
                chats.mark_dirty(chat.id, self.user_id)
            return lambda: self.resolve(chat)
        if chats.blocks.blocked(self.peer_id, self.user_id):
            raise ChatError("blocked")
        chat = chats.create_chat(batch, now, kind="direct", creator=self.user_id, chat_id=self.chat_id)
        for uid in (low, high):
            chats.add_member(chat, uid, now, role="member", batch=batch)
        batch.add_direct(low, high, chat.id)
        chats.note_direct(low, high, chat.id)

        def effect() -> None:
            chats.routing.members_changed(chat.id, (low, high))
            self.resolve(chat)

        return effect


@attrs.define(eq=False)
class SetHidden(Awaitable):
    """Hide a chat from (or show it again in) the user's chat list."""

    user_id: int = 0
    chat_id: int = 0
    hidden: bool = True

    def reads(self, reads: Reads) -> None:
        reads.chats.add(self.chat_id)

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        chat = chats.get(self.chat_id)
        record = chat.members.get(self.user_id) if chat else None
        if chat is None or record is None:
            raise ChatError("not_member")
        if bool(record.get("hidden")) != self.hidden:
            record["hidden"] = self.hidden
            chats.mark_dirty(chat.id, self.user_id)
        return lambda: self.resolve(None)


@attrs.define(eq=False)
class PurgeExpired(Awaitable):
    """Remove disappearing messages whose time is up: (chat, seq, message id, expires_at)
    each, as `Storage.due_expiry` found them."""

    entries: list[tuple[int, int, int, int]] = attrs.Factory(list)

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        for chat_id, seq, message_id, expires_at in self.entries:
            batch.delete_message(chat_id, seq, message_id, expires_at)
            forget_reactions(batch, chat_id, seq)
            chat = chats.get(chat_id)
            if chat is not None and chat.last_message and chat.last_message["seq"] == seq:
                chat.last_message = None
        purged = len(self.entries)
        return lambda: self.resolve(purged)
