"""The invariants a run must keep, checked against the shared database and what every
device saw. Each broken one is a line of text naming what broke.

Checked as frames arrive (device.py): on one connection no seq is delivered twice, none
the device had acknowledged as its own send, none before every seq below it (from where
the connection started) has arrived; every ack of one client_msg_id names the same
message. Checked here, at the end of a run:

* per chat, the stored seqs are 1..last with no gap, and the chat's stored seq is last;
* no two different messages were acknowledged with one seq;
* every acknowledged message is stored exactly once, at the seq and with the id its ack
  named, with its sender's client_msg_id (and its dedupe record points at it);
* every stored message was sent by someone (nothing is invented);
* after healing, every device holds every stored seq of its chats and has nothing
  unacknowledged.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from .device import SimDevice
from .memstore import SharedDatabase


def check_storage(db: SharedDatabase, chats: Iterable[int]) -> list[str]:
    """Per chat: seqs 1..last, no gap, and the stored seq counter agrees."""
    problems = []
    for chat in chats:
        seqs = list(db.chat_log(chat))
        last = db.last_seq.get(chat, 0)
        if seqs != list(range(1, len(seqs) + 1)):
            gaps = sorted(set(range(1, max(seqs, default=0) + 1)) - set(seqs))
            problems.append(f"chat {chat}: stored seqs have gaps at {gaps[:10]}")
        if seqs and last != seqs[-1]:
            problems.append(f"chat {chat}: the stored seq is {last} but the log ends at {seqs[-1]}")
    return problems


def check_acks(db: SharedDatabase, devices: Iterable[SimDevice], sent: dict[tuple[int, str], int]) -> list[str]:
    """Acks against the log. `sent`: (user, client_msg_id) -> chat of every send made."""
    problems = []
    by_seq: dict[tuple[int, int], set[tuple[int, str, str]]] = {}
    acked: dict[tuple[int, str], tuple[int, int, str]] = {}
    for device in devices:
        for cmid, (chat, seq, message_id) in device.acks.items():
            by_seq.setdefault((chat, seq), set()).add((device.user_id, cmid, message_id))
            earlier = acked.setdefault((device.user_id, cmid), (chat, seq, message_id))
            if earlier != (chat, seq, message_id):
                problems.append(f"user {device.user_id} {cmid}: acknowledged as {earlier} and as "
                                f"{(chat, seq, message_id)} on two devices")
    for (chat, seq), messages in sorted(by_seq.items()):
        if len(messages) > 1:
            problems.append(f"chat {chat} seq {seq}: two different messages acknowledged with one seq: "
                            f"{sorted(messages)}")
    stored: dict[tuple[int, str], list[tuple[int, int, str]]] = {}
    for chat in sorted({c for c, _ in by_seq} | set(db.logs)):
        for seq, entry in db.chat_log(chat).items():
            record = orjson.loads(entry.raw)
            key = (int(record["from"] or 0), record.get("client_msg_id") or "")
            stored.setdefault(key, []).append((chat, seq, str(entry.message_id)))
            if key not in sent:
                problems.append(f"chat {chat} seq {seq}: a stored message nobody sent ({key})")
            elif sent[key] != chat:
                problems.append(f"chat {chat} seq {seq}: {key} was sent to chat {sent[key]}")
    for key, places in sorted(stored.items()):
        if len(places) > 1:
            problems.append(f"user {key[0]} {key[1]}: stored {len(places)} times: {places}")
    for (user, cmid), (chat, seq, message_id) in sorted(acked.items()):
        places = stored.get((user, cmid), [])
        if (chat, seq, message_id) not in places:
            problems.append(f"user {user} {cmid}: acknowledged as chat {chat} seq {seq} id {message_id} "
                            f"but stored as {places or 'nothing'}")
        dedupe = db.dedupe.get((user, cmid))
        if dedupe is None or (dedupe.chat_id, dedupe.seq, str(dedupe.message_id)) != (chat, seq, message_id):
            problems.append(f"user {user} {cmid}: its dedupe record {dedupe} does not name its message")
    return problems


def check_convergence(db: SharedDatabase, devices: Iterable[SimDevice]) -> list[str]:
    """After healing: every device holds its chats' logs and has nothing unacknowledged."""
    problems = []
    for device in devices:
        for chat in device.chats:
            last = max(db.chat_log(chat), default=0)
            missing = [s for s in range(1, last + 1) if not device.holds(chat, s)]
            if missing:
                problems.append(f"{device.name} chat {chat}: never received seqs {missing[:10]} of {last}")
        if device.outbox:
            problems.append(f"{device.name}: {len(device.outbox)} sends never acknowledged: "
                            f"{list(device.outbox)[:5]}")
    return problems
