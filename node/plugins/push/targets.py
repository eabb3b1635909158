"""Push targets in LMDB: `push_targets`, u64 user id | u64 target id -> target (JSON).

Keyed by user first, so "the targets of this user" is one short prefix scan: that is
what every offline recipient costs the push plugin.
"""

from __future__ import annotations

from typing import Any

import orjson

from ...storage import WriteBatch
from ...storage.keys import pair, prefix_end, u64

TARGETS = "push_targets"
DATABASES = [TARGETS]


class Targets:
    def __init__(self, storage: Any) -> None:
        self._storage = storage

    def of_user(self, user_id: int) -> list[dict[str, Any]]:
        prefix = u64(user_id)
        with self._storage.read() as txn:
            return [orjson.loads(v) for _, v in self._storage.scan(txn, TARGETS, prefix, prefix_end(prefix))]

    def get(self, user_id: int, target_id: int) -> dict[str, Any] | None:
        raw = self._storage.get(TARGETS, pair(user_id, target_id))
        return orjson.loads(raw) if raw is not None else None

    async def put(self, user_id: int, target: dict[str, Any], evict: list[dict[str, Any]] = ()) -> None:
        batch = WriteBatch()
        for old in evict:
            batch.delete(TARGETS, pair(user_id, int(old["id"])))
        batch.put(TARGETS, pair(user_id, int(target["id"])), orjson.dumps(target))
        await self._storage.write(batch)

    def of_device(self, user_id: int, device_id: int) -> list[dict[str, Any]]:
        """The targets a device registered (what its logout removes)."""
        return [t for t in self.of_user(user_id) if t.get("device") == str(device_id)]

    async def delete(self, user_id: int, *target_ids: int) -> None:
        batch = WriteBatch()
        for target_id in target_ids:
            batch.delete(TARGETS, pair(user_id, target_id))
        await self._storage.write(batch)


def public(target: dict[str, Any]) -> dict[str, Any]:
    """What the owner sees of a target (the keys stay on the node)."""
    return {k: target[k] for k in ("id", "kind", "endpoint", "created") if k in target}
