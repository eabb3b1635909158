"""Snowflake ids: 41-bit milliseconds since EPOCH, 10-bit node id, 12-bit sequence.

Ids minted by one node are strictly increasing, even when the wall clock steps back:
the generator never lets its millisecond go below the last one it used, and borrows
from the next millisecond when the 4096 ids of one millisecond are spent. Ids travel
as decimal strings in JSON, since JavaScript numbers cannot hold 64 bits.
"""

from __future__ import annotations

import time
from collections.abc import Callable

EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
NODE_BITS = 10
SEQ_BITS = 12
MAX_NODE_ID = (1 << NODE_BITS) - 1
MAX_SEQ = (1 << SEQ_BITS) - 1
MAX_MS = (1 << 41) - 1


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class SnowflakeGenerator:
    def __init__(self, node_id: int, *, after: int = 0, clock: Callable[[], int] = _wall_ms) -> None:
        """`after` is the highest id this node issued before (restarts continue above it)."""
        if not 0 <= node_id <= MAX_NODE_ID:
            raise ValueError(f"node id must be between 0 and {MAX_NODE_ID}, got {node_id}")
        self.node_id = node_id
        self._clock = clock
        self._last_ms = 0
        self._seq = MAX_SEQ
        if after:
            self._last_ms = timestamp_ms(after) - EPOCH_MS
            self._seq = after & MAX_SEQ

    def next_id(self) -> int:
        now = self._clock() - EPOCH_MS
        if now > self._last_ms:
            self._last_ms = now
            self._seq = 0
        elif self._seq < MAX_SEQ:
            self._seq += 1  # same millisecond, or the clock stepped back: keep counting
        else:
            self._last_ms += 1  # sequence exhausted: borrow the next millisecond
            self._seq = 0
        if self._last_ms > MAX_MS:
            raise OverflowError("Snowflake time field exhausted")
        return (self._last_ms << (NODE_BITS + SEQ_BITS)) | (self.node_id << SEQ_BITS) | self._seq

    @property
    def last_id(self) -> int:
        """The highest id minted so far (persisted so a restart continues above it)."""
        return (self._last_ms << (NODE_BITS + SEQ_BITS)) | (self.node_id << SEQ_BITS) | self._seq

    @property
    def last_ms(self) -> int:
        """Unix milliseconds of the last id minted (may run ahead of a stepped-back clock)."""
        return self._last_ms + EPOCH_MS


def timestamp_ms(snowflake: int) -> int:
    """Unix milliseconds encoded in an id."""
    return (snowflake >> (NODE_BITS + SEQ_BITS)) + EPOCH_MS


def node_of(snowflake: int) -> int:
    return (snowflake >> SEQ_BITS) & MAX_NODE_ID


def parse_id(value: object) -> int:
    """Parse an id from JSON: a string of ASCII digits, nothing else. Raises ValueError.

    A JSON number is refused, as the docs promise: a JavaScript client cannot hold 64 bits
    in one, so accepting numbers would accept ids that were already rounded. Other
    Unicode digits ("１２", "١٢") are refused too, though Python's int() reads them."""
    if not (isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20):
        raise ValueError("an id must be a decimal string")
    number = int(value)
    if not 0 < number < (1 << 63):
        raise ValueError("id out of range")
    return number
