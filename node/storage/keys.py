"""Key codecs. Integers are fixed-width big-endian so LMDB's byte order is numeric order."""

from __future__ import annotations

import struct

_U64 = struct.Struct(">Q")
_U64X2 = struct.Struct(">QQ")

u64 = _U64.pack


def from_u64(raw: bytes) -> int:
    return _U64.unpack(raw)[0]


def pair(a: int, b: int) -> bytes:
    """Two ids as one 16-byte key: sorts by a, then b (e.g. chat|seq, user|chat)."""
    return _U64X2.pack(a, b)


def from_pair(raw: bytes) -> tuple[int, int]:
    return _U64X2.unpack(raw)


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix` (for range scans)."""
    return (int.from_bytes(prefix, "big") + 1).to_bytes(len(prefix), "big")
