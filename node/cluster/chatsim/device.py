"""A simulated device: what node/client.py does, without sockets, and what it saw.

Like the real client it keeps a cursor per chat (the highest seq held with none missing
below, node/client.py's `note_seq`), presents the cursors in its hello, keeps every send
in an outbox until acknowledged and sends it again with the same client_msg_id after an
error or a reconnect, and reconnects (to a node the simulation picks) after a drop.

It also checks, as frames arrive, what one connection must never do (see checker.py):
deliver a seq twice, deliver one it acknowledged as the device's own send, or deliver
one before every seq below it (from where the connection started) has arrived.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import trio

from .wire import ClientEnd

RETRY_AFTER = 0.5  # seconds before a refused send goes out again


class Connection:
    """One connection's view: where each chat started and what arrived on it."""

    def __init__(self, node_id: int, number: int, cursors: dict[int, int]) -> None:
        self.node_id = node_id
        self.number = number
        self.start = dict(cursors)  # chat -> the cursor presented in hello (absent: 0)
        self.arrived: dict[int, set[int]] = {}  # chat -> seqs delivered or acked here
        self.upto: dict[int, int] = {}  # chat -> every seq from its start to this one arrived here
        self.own_acked: dict[int, set[int]] = {}  # chat -> seqs acked here as this device's sends
        self.synced = False


class SimDevice:
    """One logged-in device of one user."""

    def __init__(self, user_id: int, device_id: int, token: str, chats: list[int], nursery: trio.Nursery,
                 record: Callable[[str], None], violation: Callable[[str], None]) -> None:
        self.nursery = nursery  # where retries wait
        self.user_id = user_id
        self.device_id = device_id
        self.token = token
        self.chats = chats  # the chats its user is a member of
        self.cursors: dict[int, int] = {}
        self._ahead: dict[int, set[int]] = {}
        self.outbox: dict[str, tuple[int, str]] = {}  # client_msg_id -> (chat, text), oldest first
        self.acks: dict[str, tuple[int, int, str]] = {}  # client_msg_id -> (chat, seq, message id)
        self.end: ClientEnd | None = None
        self.connection: Connection | None = None
        self.connections = 0
        self.sent = 0
        self.errors = 0
        self.delivered = 0
        self.duplicate_acks = 0
        self.offline_until = 0.0  # the simulation keeps it away until then
        self._record = record
        self._violation = violation
        self._retry_pending = False

    @property
    def name(self) -> str:
        return f"u{self.user_id}/d{self.device_id}"

    @property
    def connected(self) -> bool:
        return self.end is not None

    def holds(self, chat: int, seq: int) -> bool:
        return seq <= self.cursors.get(chat, 0) or seq in self._ahead.get(chat, ())

    def caught_up(self, last_seqs: dict[int, int]) -> bool:
        """Holds every stored seq of its chats, and nothing of its own is unacknowledged."""
        return not self.outbox and all(self.cursors.get(c, 0) >= last_seqs.get(c, 0) for c in self.chats)

    def _note(self, chat: int, seq: int) -> None:
        """node/client.py's note_seq: the cursor moves only over what arrived with no gap."""
        cursor = self.cursors.get(chat, 0)
        if seq <= cursor:
            return
        ahead = self._ahead.setdefault(chat, set())
        ahead.add(seq)
        while cursor + 1 in ahead:
            cursor += 1
            ahead.discard(cursor)
        if not ahead:
            del self._ahead[chat]
        self.cursors[chat] = cursor

    # -- the connection's life -------------------------------------------------------------

    async def serve(self, end: ClientEnd, node_id: int) -> None:
        """Say hello, send what is unacknowledged, then read frames until the connection ends."""
        self.connections += 1
        self.end = end
        self.connection = connection = Connection(node_id, self.connections, self.cursors)
        self._record(f"connect {self.name} node={node_id} cursors={sorted(self.cursors.items())}")
        hello = {"type": "hello", "token": self.token, "cursors": {str(c): s for c, s in self.cursors.items()}}
        try:
            if await end.send(orjson.dumps(hello).decode()):
                await self._resend_all(end)
                while (text := await end.receive()) is not None:
                    self._frame(connection, text)
        finally:
            self.end = None
            self.connection = None
            end.close()
            self._record(f"disconnect {self.name} node={node_id}")

    def drop(self) -> None:
        """The device loses its connection (the network, not the node)."""
        if self.end is not None:
            self.end.close()

    async def _resend_all(self, end: ClientEnd) -> None:
        for cmid, (chat, text) in list(self.outbox.items()):
            if not await self._send_frame(end, cmid, chat, text):
                return

    async def _send_frame(self, end: ClientEnd, cmid: str, chat: int, text: str) -> bool:
        frame = {"type": "send", "chat": str(chat), "client_msg_id": cmid, "kind": "text", "text": text}
        self.sent += 1
        return await end.send(orjson.dumps(frame).decode())

    def send(self, cmid: str, chat: int, text: str) -> None:
        """A new message: into the outbox now, and out at once if connected."""
        self.outbox[cmid] = (chat, text)
        self._record(f"send {self.name} {cmid} chat={chat}")
        if self.end is not None:
            self.nursery.start_soon(self._send_frame, self.end, cmid, chat, text)

    def _retry_later(self) -> None:
        """After an error: everything unacknowledged goes out again shortly (same ids)."""
        if self._retry_pending:
            return
        self._retry_pending = True

        async def later() -> None:
            await trio.sleep(RETRY_AFTER)
            self._retry_pending = False
            if self.end is not None:  # on whatever connection it has now (the same ids again)
                await self._resend_all(self.end)

        self.nursery.start_soon(later)

    # -- frames --------------------------------------------------------------------------

    def _frame(self, connection: Connection, text: str) -> None:
        value = orjson.loads(text)
        for event in value if isinstance(value, list) else [value]:
            kind = event.get("type")
            if kind == "message":
                self._message(connection, event)
            elif kind == "ack":
                self._ack(connection, event)
            elif kind == "error":
                self.errors += 1
                self._record(f"error {self.name} {event.get('code')} ref={event.get('ref')}")
                if event.get("ref") is None or event["ref"] in self.outbox:
                    self._retry_later()
            elif kind == "synced":
                connection.synced = True

    def _message(self, connection: Connection, event: dict[str, Any]) -> None:
        chat, seq = int(event["chat"]), int(event["seq"])
        arrived = connection.arrived.setdefault(chat, set())
        where = f"{self.name} connection {connection.number} (node {connection.node_id}) chat {chat} seq {seq}"
        if seq in arrived:
            kind = "its own acknowledged send" if seq in connection.own_acked.get(chat, ()) else "a seq"
            self._violation(f"{where}: {kind} delivered again on one connection")
        upto = connection.upto.get(chat, connection.start.get(chat, 0))
        if seq > upto + 1:
            self._violation(f"{where}: delivered before seq {upto + 1} (out of order or a gap)")
        self._arrived(connection, chat, seq)
        self.delivered += 1
        self._note(chat, seq)
        self._record(f"msg {self.name} chat={chat} seq={seq} id={event['id']} cmid={event.get('client_msg_id')}")

    def _ack(self, connection: Connection, event: dict[str, Any]) -> None:
        cmid = event["client_msg_id"]
        chat, seq, message_id = int(event["chat"]), int(event["seq"]), str(event["id"])
        earlier = self.acks.get(cmid)
        if earlier is not None and earlier != (chat, seq, message_id):
            self._violation(f"{self.name} {cmid}: acknowledged as {earlier} and again as {(chat, seq, message_id)}")
        self.acks.setdefault(cmid, (chat, seq, message_id))
        self.outbox.pop(cmid, None)
        if event.get("duplicate"):
            self.duplicate_acks += 1
        else:
            connection.own_acked.setdefault(chat, set()).add(seq)
        self._arrived(connection, chat, seq)
        self._note(chat, seq)
        self._record(f"ack {self.name} {cmid} chat={chat} seq={seq} id={message_id} dup={bool(event.get('duplicate'))}")

    @staticmethod
    def _arrived(connection: Connection, chat: int, seq: int) -> None:
        arrived = connection.arrived.setdefault(chat, set())
        arrived.add(seq)
        upto = connection.upto.get(chat, connection.start.get(chat, 0))
        while upto + 1 in arrived:
            upto += 1
        connection.upto[chat] = upto
