"""Cluster messages and their compact wire form (msgpack arrays, never pickle).

A datagram body is a msgpack array of messages; each message is an array
``[tag, field, ...]`` in the order of its class's fields. Decoding is strict: an
unknown tag, a wrong field count, a wrong type or an out-of-range value raises
``DecodeError`` and the whole packet is dropped. Several messages share one
datagram: that is how SWIM piggybacks gossip on probe traffic.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import msgpack

PROTOCOL_VERSION = 1  # announced in member metadata; bump when the wire form changes
MIN_PROTOCOL_VERSION = 1
MAX_NODE_ID = 1023
MAX_INCARNATION = (1 << 63) - 1
MAX_TEXT = 512  # bytes of a name, address or URL
MAX_MEMBERS_PER_FRAME = 65_536


class DecodeError(Exception):
    """The bytes are not a valid cluster message."""


# member states, as sent in push-pull state and shown by the admin endpoint
ALIVE, SUSPECT, DEAD, LEFT = "alive", "suspect", "failed", "left"
STATES = (ALIVE, SUSPECT, DEAD, LEFT)
_STATE_CODES = {s: i for i, s in enumerate(STATES)}


def _node_id(v: Any) -> bool:
    return type(v) is int and 0 <= v <= MAX_NODE_ID


def _u63(v: Any) -> bool:
    return type(v) is int and 0 <= v <= MAX_INCARNATION


def _text(v: Any) -> bool:
    return type(v) is str and len(v) <= MAX_TEXT


def _bool(v: Any) -> bool:
    return type(v) is bool


def _u16(v: Any) -> bool:
    return type(v) is int and 0 <= v <= 0xFFFF


@attrs.frozen(slots=True)
class Ping:
    """Are you alive? ``target`` guards against a new process on an old address."""

    TAG: ClassVar[int] = 1
    seq: int
    target: int
    source: str  # "host:port" to answer to


@attrs.frozen(slots=True)
class IndirectPing:
    """Please ping ``target`` for me and relay its ack (SWIM ping-req)."""

    TAG: ClassVar[int] = 2
    seq: int
    target: int
    target_address: str
    source: str
    nack: bool  # answer with a Nack if the target stays silent (Lifeguard)


@attrs.frozen(slots=True)
class Ack:
    TAG: ClassVar[int] = 3
    seq: int


@attrs.frozen(slots=True)
class Nack:
    """The relay is alive but the target did not answer it: the prober's network works."""

    TAG: ClassVar[int] = 4
    seq: int


@attrs.frozen(slots=True)
class Alive:
    """A member and its metadata at an incarnation; a higher incarnation wins."""

    TAG: ClassVar[int] = 5
    node: int
    incarnation: int
    name: str
    address: str  # cluster "host:port" (UDP and TCP)
    http_url: str
    protocol: int


@attrs.frozen(slots=True)
class Suspect:
    TAG: ClassVar[int] = 6
    node: int
    incarnation: int
    source: int  # who suspects; independent sources shorten the suspicion (Lifeguard)


@attrs.frozen(slots=True)
class Dead:
    """Failed, or left when ``source == node`` (a graceful leave is not a failure)."""

    TAG: ClassVar[int] = 7
    node: int
    incarnation: int
    source: int


@attrs.frozen(slots=True)
class MemberState:
    """One row of a full state exchange."""

    node: int
    incarnation: int
    state: str
    name: str
    address: str
    http_url: str
    protocol: int


@attrs.frozen(slots=True)
class PushPull:
    """Full membership state, sent both ways over a stream on join and periodically."""

    TAG: ClassVar[int] = 8
    join: bool
    sender: int
    members: tuple[MemberState, ...]


@attrs.frozen(slots=True)
class Refuse:
    """A joiner is turned away (its node id is taken); ``reason`` is for the operator."""

    TAG: ClassVar[int] = 9
    code: str
    reason: str


Message = Ping | IndirectPing | Ack | Nack | Alive | Suspect | Dead | PushPull | Refuse

_CHECKS: dict[type, tuple[Any, ...]] = {
    Ping: (_u63, _node_id, _text),
    IndirectPing: (_u63, _node_id, _text, _text, _bool),
    Ack: (_u63,),
    Nack: (_u63,),
    Alive: (_node_id, _u63, _text, _text, _text, _u16),
    Suspect: (_node_id, _u63, _node_id),
    Dead: (_node_id, _u63, _node_id),
    Refuse: (_text, _text),
}
_BY_TAG: dict[int, type] = {
    cls.TAG: cls for cls in (Ping, IndirectPing, Ack, Nack, Alive, Suspect, Dead, PushPull, Refuse)
}
_MEMBER_CHECKS = (_node_id, _u63, _u16, _text, _text, _text, _u16)


def _to_wire(msg: Message) -> list[Any]:
    if isinstance(msg, PushPull):
        rows = [
            [m.node, m.incarnation, _STATE_CODES[m.state], m.name, m.address, m.http_url, m.protocol]
            for m in msg.members
        ]
        return [PushPull.TAG, msg.join, msg.sender, rows]
    return [msg.TAG, *attrs.astuple(msg, recurse=False)]


def _from_wire(item: Any) -> Message:
    if type(item) is not list or not item or type(item[0]) is not int:
        raise DecodeError("a message must be [tag, ...]")
    cls = _BY_TAG.get(item[0])
    if cls is None:
        raise DecodeError(f"unknown message tag {item[0]}")
    fields = item[1:]
    if cls is PushPull:
        if len(fields) != 3 or not _bool(fields[0]) or not _node_id(fields[1]) or type(fields[2]) is not list:
            raise DecodeError("malformed push-pull")
        members = []
        for row in fields[2]:
            if type(row) is not list or len(row) != 7 or not all(c(v) for c, v in zip(_MEMBER_CHECKS, row)):
                raise DecodeError("malformed member row")
            if row[2] >= len(STATES):
                raise DecodeError("unknown member state")
            members.append(MemberState(row[0], row[1], STATES[row[2]], row[3], row[4], row[5], row[6]))
        return PushPull(fields[0], fields[1], tuple(members))
    checks = _CHECKS[cls]
    if len(fields) != len(checks) or not all(check(v) for check, v in zip(checks, fields)):
        raise DecodeError(f"malformed {cls.__name__}")
    return cls(*fields)


def encode_one(msg: Message) -> bytes:
    """One message as a msgpack array (what ``encode_packet`` concatenates)."""
    return msgpack.packb(_to_wire(msg), use_bin_type=True)


def encode_packet(parts: list[bytes]) -> bytes:
    """Join already-encoded messages into one packet body (a msgpack array)."""
    n = len(parts)
    if n < 16:
        header = bytes((0x90 | n,))
    else:
        header = b"\xdc" + n.to_bytes(2, "big")
    return header + b"".join(parts)


def packet_overhead(count: int) -> int:
    return 1 if count < 16 else 3


def encode(messages: list[Message]) -> bytes:
    return encode_packet([encode_one(m) for m in messages])


def decode(body: bytes) -> list[Message]:
    """A packet body → its messages; raises DecodeError on anything malformed."""
    try:
        items = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=MAX_TEXT * 4,
            max_bin_len=0,
            max_array_len=MAX_MEMBERS_PER_FRAME,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:
        raise DecodeError(f"not msgpack: {type(exc).__name__}") from None
    if type(items) is not list or not items:
        raise DecodeError("a packet must be a non-empty array of messages")
    return [_from_wire(item) for item in items]
