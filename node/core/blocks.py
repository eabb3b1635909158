"""Blocking: a blocked user cannot message you 1-1, add you to groups or see your presence."""

from __future__ import annotations

from ..storage import Storage, WriteBatch
from ..storage.keys import from_pair, pair, prefix_end, u64


class Blocks:
    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._by_blocker: dict[int, set[int]] = {}

    def blocked_by(self, blocker: int) -> set[int]:
        """Everyone `blocker` has blocked (cached after the first read)."""
        known = self._by_blocker.get(blocker)
        if known is None:
            known = set()
            prefix = u64(blocker)
            with self._storage.read() as txn:
                for key, _ in self._storage.scan(txn, "blocks", prefix, prefix_end(prefix)):
                    known.add(from_pair(key)[1])
            self._by_blocker[blocker] = known
        return known

    def blocked(self, blocker: int, other: int) -> bool:
        return other in self.blocked_by(blocker)

    def either(self, a: int, b: int) -> bool:
        return self.blocked(a, b) or self.blocked(b, a)

    async def set(self, blocker: int, other: int, blocked: bool) -> None:
        batch = WriteBatch()
        if blocked:
            batch.put("blocks", pair(blocker, other), b"")
        else:
            batch.delete("blocks", pair(blocker, other))
        await self._storage.write(batch)
        if blocked:
            self.blocked_by(blocker).add(other)
        else:
            self.blocked_by(blocker).discard(other)
