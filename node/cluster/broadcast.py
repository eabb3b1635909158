"""The transmit-limited broadcast queue that gossip and probe traffic piggyback on.

Each membership change is queued once, keyed by the member it is about, so a newer
message about a member replaces the older one. Every datagram this node sends takes
the least-transmitted messages that fit. A message is retransmitted
``retransmit_mult * ceil(log10(n + 1))`` times and then dropped: enough for an
epidemic to reach every member with high probability, while the traffic per member
stays constant as the cluster grows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs


def retransmit_limit(mult: int, members: int) -> int:
    return mult * math.ceil(math.log10(members + 1))


@attrs.define(slots=True)
class _Item:
    key: Any
    payload: bytes  # already encoded, so size is known and encoding is paid once
    transmits: int
    order: int  # newer first among equals, like memberlist


class BroadcastQueue:
    """Pending gossip; bounded by one entry per key (per member)."""

    def __init__(self, retransmit_mult: int, member_count: Callable[[], int]) -> None:
        self._mult = retransmit_mult
        self._member_count = member_count
        self._items: dict[Any, _Item] = {}
        self._order = 0
        self.enqueued = 0

    def __len__(self) -> int:
        return len(self._items)

    def queue(self, key: Any, payload: bytes) -> None:
        """Queue ``payload``; it replaces any pending message with the same key."""
        self._order += 1
        self.enqueued += 1
        self._items[key] = _Item(key, payload, 0, self._order)

    def take(self, overhead: int, limit: int) -> list[bytes]:
        """Messages that fit in ``limit`` bytes, each counted as one more transmit.

        Args:
            overhead: bytes each message costs in the packet besides its payload.
            limit: bytes available.
        """
        if not self._items or limit <= 0:
            return []
        cap = retransmit_limit(self._mult, self._member_count())
        out: list[bytes] = []
        used = 0
        for item in sorted(self._items.values(), key=lambda i: (i.transmits, -i.order)):
            size = len(item.payload) + overhead
            if used + size > limit:
                continue
            used += size
            out.append(item.payload)
            item.transmits += 1
            if item.transmits >= cap:
                del self._items[item.key]
        return out

    def pending(self, key: Any) -> bool:
        return key in self._items
