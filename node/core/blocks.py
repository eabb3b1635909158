"""Blocking: a blocked user cannot message you 1-1, add you to groups or see your presence."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..storage import Storage, WriteBatch


class Blocks:
    """Who blocks whom, cached per blocker once loaded (`load`); the sync checks answer
    from the cache, so callers load the users they ask about first."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._by_blocker: dict[int, set[int]] = {}
        #: Called with a blocker's id after their blocks changed (other nodes drop their copy).
        self.on_change: Callable[[int], None] = lambda _blocker: None

    async def load(self, blockers: Iterable[int]) -> None:
        missing = [b for b in blockers if b not in self._by_blocker]
        if missing:
            for blocker, found in (await self._storage.blocks_of(missing)).items():
                self._by_blocker.setdefault(blocker, found)

    async def blocked_by(self, blocker: int) -> set[int]:
        """Everyone `blocker` has blocked."""
        await self.load((blocker,))
        return self._by_blocker[blocker]

    def forget(self, blockers: Iterable[int]) -> None:
        """Another node changed whom these users block: read it again when next asked."""
        for blocker in blockers:
            self._by_blocker.pop(blocker, None)

    def blocked(self, blocker: int, other: int) -> bool:
        """Whether `blocker` blocks `other`. `blocker` must be loaded: guessing "no" could
        let a blocked user through."""
        known = self._by_blocker.get(blocker)
        if known is None:
            raise RuntimeError(f"the blocks of user {blocker} are not loaded")
        return other in known

    def either(self, a: int, b: int) -> bool:
        return self.blocked(a, b) or self.blocked(b, a)

    async def either_loaded(self, a: int, b: int) -> bool:
        await self.load((a, b))
        return self.either(a, b)

    async def set(self, blocker: int, other: int, blocked: bool) -> None:
        batch = WriteBatch()
        if blocked:
            batch.put_block(blocker, other)
        else:
            batch.delete_block(blocker, other)
        await self._storage.write(batch)
        self.on_change(blocker)
        known = await self.blocked_by(blocker)
        if blocked:
            known.add(other)
        else:
            known.discard(other)
