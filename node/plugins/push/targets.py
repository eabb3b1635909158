"""Push targets: table `targets` of the plugin's store, u64 user id | u64 target id -> target (JSON).

Keyed by user first, so "the targets of this user" is one short prefix scan: that is
what every offline recipient costs the push plugin.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from ... import PluginStore

TABLE = "targets"


def _key(user_id: int, target_id: int) -> bytes:
    return user_id.to_bytes(8, "big") + target_id.to_bytes(8, "big")


class Targets:
    def __init__(self, store: PluginStore) -> None:
        self._store = store
        self._table = store.table(TABLE)

    async def of_user(self, user_id: int) -> list[dict[str, Any]]:
        rows = await self._table.scan_prefix(user_id.to_bytes(8, "big"))
        return [orjson.loads(v) for _, v in rows]

    async def get(self, user_id: int, target_id: int) -> dict[str, Any] | None:
        raw = await self._table.get(_key(user_id, target_id))
        return orjson.loads(raw) if raw is not None else None

    async def put(self, user_id: int, target: dict[str, Any], evict: Sequence[dict[str, Any]] = ()) -> None:
        batch = self._store.batch()
        for old in evict:
            batch.delete(TABLE, _key(user_id, int(old["id"])))
        batch.put(TABLE, _key(user_id, int(target["id"])), orjson.dumps(target))
        await self._store.write(batch)

    async def of_device(self, user_id: int, device_id: int) -> list[dict[str, Any]]:
        """The targets a device registered (what its logout removes)."""
        return [t for t in await self.of_user(user_id) if t.get("device") == str(device_id)]

    async def delete(self, user_id: int, *target_ids: int) -> None:
        batch = self._store.batch()
        for target_id in target_ids:
            batch.delete(TABLE, _key(user_id, target_id))
        await self._store.write(batch)


def public(target: dict[str, Any]) -> dict[str, Any]:
    """What the owner sees of a target (the keys stay on the node)."""
    return {k: target[k] for k in ("id", "kind", "endpoint", "created") if k in target}
