"""A write batch: typed changes to apply atomically, in order, in one transaction.

The batch is the unit of writing for both engines: the core and plugins describe *what*
changes (a message appended, a member record replaced, a token deleted), never how an
engine lays it out, so LMDB keys and PostgreSQL rows stay private to their engine.

Each change is a plain tuple ``(op, *args)`` so that building a batch on the hot path
costs one list append. Engines dispatch on ``op``. The ops, with their guarantees:

=================  ==============================================  ===========================
op                 args                                            semantics
=================  ==============================================  ===========================
put_user           user_id, record                                 insert or replace
update_user        user_id, fields, drop, settings, expect         change a stored record: set
                                                                   ``fields``, remove the keys in
                                                                   ``drop``, merge ``settings``
                                                                   into its settings; no record,
                                                                   a tombstone, or a record
                                                                   without the values in
                                                                   ``expect``: no change
add_username       name, user_id                                   insert; a taken name fails
remove_username    name                                            delete
put_token          token_hash, record                              insert or replace
delete_token       token_hash                                      delete if present
put_chat           chat_id, record                                 insert or replace
put_member         chat_id, user_id, record                        insert or replace
add_direct         low_user, high_user, chat_id                    insert; a second one fails
append_message     chat_id, seq, message_id, raw, meta             insert; a taken seq or id fails
rewrite_message    chat_id, seq, raw, meta                         replace an existing entry
delete_message     chat_id, seq, message_id, expires_at            delete (purges)
set_chat_seq       chat_id, new_seq, expected_seq                  compare-and-set (a fence)
add_dedupe         user_id, client_msg_id, ack                     insert; a taken id fails
delete_dedupe      user_id, client_msg_id, ts                      delete if still that send's
put_block          blocker, blocked                                insert if absent
delete_block       blocker, blocked                                delete if present
put_meta           key, value                                      insert or replace
delete_meta        key                                             delete if present
kv_put             namespace, key, value                           insert or replace
kv_delete          namespace, key                                  delete if present
kv_delete_range    namespace, start, end                           delete start <= key < end
=================  ==============================================  ===========================

``meta`` of a log entry is a `MessageMeta` (sender, kind, ts, expires_at): the columns an
engine indexes (unread counts, expiry) without parsing the record. ``ack`` of a dedupe
record is a `DedupeAck`.

"fails" means the whole transaction is refused with `StorageConflict` and nothing of it
is applied: that is what makes two nodes that both believe they own a chat harmless (the
second one to take a seq loses). ``set_chat_seq`` fails unless the stored value is
``expected_seq`` (``None``: set unconditionally, for copies and migrations).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple


class MessageMeta(NamedTuple):
    """What an engine may index of a log entry without parsing it."""

    sender: int  # 0: the node itself (system entries)
    kind: str
    ts: int  # Unix ms
    expires_at: int = 0  # Unix ms; 0: never


class DedupeAck(NamedTuple):
    """What a send with a client_msg_id produced: the ack a retry gets again."""

    chat_id: int
    seq: int
    message_id: int
    ts: int


Op = tuple[Any, ...]


class WriteBatch:
    """Changes to commit atomically, in order (see the module docstring)."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def __len__(self) -> int:
        return len(self.ops)

    def __bool__(self) -> bool:
        return bool(self.ops)

    def extend(self, other: WriteBatch) -> None:
        self.ops.extend(other.ops)

    def mark(self) -> int:
        """A position to roll back to with `rollback` (a refused operation's writes)."""
        return len(self.ops)

    def rollback(self, mark: int) -> None:
        del self.ops[mark:]

    # -- accounts ----------------------------------------------------------------

    def put_user(self, user_id: int, record: dict[str, Any]) -> None:
        self.ops.append(("put_user", user_id, record))

    def update_user(self, user_id: int, fields: dict[str, Any], *, drop: Iterable[str] = (),
                    settings: dict[str, Any] | None = None, expect: dict[str, Any] | None = None) -> None:
        """Change some fields of the stored record, whatever else it holds by then: another
        node may change other fields of the same record at the same moment. `expect`: top-level
        fields the stored record must still hold, with these scalar values, for the change to apply
        (a compare-and-set where a change must not undo another node's: else nothing changes)."""
        self.ops.append(("update_user", user_id, fields, list(drop), settings or {}, expect or {}))

    def add_username(self, name: str, user_id: int) -> None:
        self.ops.append(("add_username", name, user_id))

    def remove_username(self, name: str) -> None:
        self.ops.append(("remove_username", name))

    def put_token(self, token_hash: bytes, record: dict[str, Any]) -> None:
        self.ops.append(("put_token", token_hash, record))

    def delete_token(self, token_hash: bytes) -> None:
        self.ops.append(("delete_token", token_hash))

    # -- chats -------------------------------------------------------------------

    def put_chat(self, chat_id: int, record: dict[str, Any]) -> None:
        self.ops.append(("put_chat", chat_id, record))

    def put_member(self, chat_id: int, user_id: int, record: dict[str, Any]) -> None:
        self.ops.append(("put_member", chat_id, user_id, record))

    def add_direct(self, low: int, high: int, chat_id: int) -> None:
        self.ops.append(("add_direct", low, high, chat_id))

    def append_message(self, chat_id: int, seq: int, message_id: int, raw: bytes, meta: MessageMeta) -> None:
        self.ops.append(("append_message", chat_id, seq, message_id, raw, meta))

    def rewrite_message(self, chat_id: int, seq: int, raw: bytes, meta: MessageMeta) -> None:
        self.ops.append(("rewrite_message", chat_id, seq, raw, meta))

    def delete_message(self, chat_id: int, seq: int, message_id: int, expires_at: int = 0) -> None:
        self.ops.append(("delete_message", chat_id, seq, message_id, expires_at))

    def set_chat_seq(self, chat_id: int, new_seq: int, expected_seq: int | None) -> None:
        self.ops.append(("set_chat_seq", chat_id, new_seq, expected_seq))

    def add_dedupe(self, user_id: int, client_msg_id: str, ack: DedupeAck) -> None:
        self.ops.append(("add_dedupe", user_id, client_msg_id, ack))

    def delete_dedupe(self, user_id: int, client_msg_id: str, ts: int) -> None:
        self.ops.append(("delete_dedupe", user_id, client_msg_id, ts))

    def put_block(self, blocker: int, blocked: int) -> None:
        self.ops.append(("put_block", blocker, blocked))

    def delete_block(self, blocker: int, blocked: int) -> None:
        self.ops.append(("delete_block", blocker, blocked))

    # -- node state and plugin data ---------------------------------------------

    def put_meta(self, key: str, value: bytes) -> None:
        self.ops.append(("put_meta", key, value))

    def delete_meta(self, key: str) -> None:
        self.ops.append(("delete_meta", key))

    def kv_put(self, namespace: str, key: bytes, value: bytes) -> None:
        self.ops.append(("kv_put", namespace, key, value))

    def kv_delete(self, namespace: str, key: bytes) -> None:
        self.ops.append(("kv_delete", namespace, key))

    def kv_delete_range(self, namespace: str, start: bytes, end: bytes) -> None:
        self.ops.append(("kv_delete_range", namespace, start, end))
