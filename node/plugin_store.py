"""A plugin's own durable data: tables of byte keys and values, namespaced to the plugin.

Every plugin gets a `PluginStore` on whichever engine the node runs (LMDB or
PostgreSQL). Its tables live in the plugin's namespace (``<plugin>/<table>``), so two
plugins, or a plugin and the core, can never write each other's data. Writes go through
the node's group commit like everything else: build a `StoreBatch`, then `write` it (or
let `on_commit` add writes to whatever commits next, for state that may lag).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable

import trio

from .storage import Storage, WriteBatch

NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def _check_name(what: str, name: str) -> str:
    if not NAME.match(name):
        raise ValueError(f"{what} {name!r}: use 1-64 of a-z, 0-9 and '_', starting with a letter")
    return name


class StoreBatch:
    """Writes to a plugin's tables, applied atomically by `PluginStore.write`."""

    __slots__ = ("_batch", "_namespace")

    def __init__(self, namespace: str, batch: WriteBatch | None = None) -> None:
        self._namespace = namespace
        self._batch = batch if batch is not None else WriteBatch()

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self._batch.kv_put(f"{self._namespace}/{table}", key, value)

    def delete(self, table: str, key: bytes) -> None:
        self._batch.kv_delete(f"{self._namespace}/{table}", key)

    def puts(self, table: str) -> list[tuple[bytes, bytes]]:
        """The (key, value) pairs this batch puts into `table`, in order."""
        name = f"{self._namespace}/{table}"
        return [(op[2], op[3]) for op in self._batch.ops if op[0] == "kv_put" and op[1] == name]

    def __len__(self) -> int:
        return len(self._batch)


class Table:
    """Reads of one table (keys sort bytewise; use big-endian integers for numeric order)."""

    __slots__ = ("_namespace", "_storage", "name")

    def __init__(self, storage: Storage, namespace: str, name: str) -> None:
        self._storage = storage
        self._namespace = f"{namespace}/{name}"
        self.name = name

    async def get(self, key: bytes) -> bytes | None:
        return (await self._storage.kv_get(self._namespace, (key,))).get(key)

    async def get_many(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        return await self._storage.kv_get(self._namespace, keys)

    async def scan(
        self, start: bytes = b"", end: bytes | None = None, *, limit: int = 1000, reverse: bool = False
    ) -> list[tuple[bytes, bytes]]:
        """(key, value) with start <= key < end (None: no upper bound), at most `limit`."""
        return await self._storage.kv_scan(self._namespace, start, end, limit, reverse=reverse)

    async def scan_prefix(self, prefix: bytes, *, limit: int = 1000) -> list[tuple[bytes, bytes]]:
        """(key, value) of the keys that start with `prefix`."""
        end = (int.from_bytes(prefix, "big") + 1).to_bytes(len(prefix), "big") if prefix.strip(b"\xff") else None
        return await self.scan(prefix, end, limit=limit)

    async def count(self) -> int:
        return await self._storage.kv_count(self._namespace)


class PluginStore:
    """The tables of one plugin."""

    def __init__(self, storage: Storage, plugin: str) -> None:
        self._storage = storage
        self.namespace = _check_name("plugin name", plugin)
        self._tables: dict[str, Table] = {}

    def table(self, name: str) -> Table:
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = Table(self._storage, self.namespace, _check_name("table name", name))
        return table

    def batch(self) -> StoreBatch:
        return StoreBatch(self.namespace)

    async def write(self, batch: StoreBatch) -> None:
        """Commit durably (group commit with the rest of the node); raises on failure."""
        await self._storage.write(batch._batch)

    def on_commit(self, hook: Callable[[StoreBatch], None],
                  failed: Callable[[StoreBatch], None] | None = None) -> None:
        """`hook(batch)` runs just before each commit of the node and may add writes to
        it: state that may lag (last-seen times) rides along without a commit of its own.
        If that commit fails (nothing of it was stored), `failed(batch)` is given those
        writes back (`batch.puts(table)`), so that the plugin keeps them for another."""

        def run() -> WriteBatch:
            batch = StoreBatch(self.namespace)
            hook(batch)
            return batch._batch

        self._storage.add_commit_hook(
            run, None if failed is None else lambda writes: failed(StoreBatch(self.namespace, writes)))


SETTLE = 1.0  # seconds between offering a new secret and reading which one the cluster keeps


async def shared_secret(store: PluginStore, table: str, name: str, make: Callable[[], bytes],
                         legacy: bytes | None, node_id: int) -> bytes:
    """A secret every node of a cluster shares, created once: the first of the candidates
    rows `name | u64 order | u64 node` in `table`.

    The plugin store has no insert-if-absent, so two nodes starting at once on an empty
    store each offer a candidate and keep whichever sorts first. A new key's order is its
    creation time, and a node reads the candidates SETTLE seconds after writing its own,
    so a node that started later (and saw another's key) never offers one that sorts
    first unless the clocks differ by more than that. A key taken over from an older
    version's file (`legacy`) has order 0 and so wins over new ones (of two such files,
    the lower node id's)."""
    prefix = name.encode() + b"/"
    rows = await store.table(table).scan_prefix(prefix, limit=1)
    if rows:
        return rows[0][1]
    order = 0 if legacy is not None else time.time_ns()
    batch = store.batch()
    batch.put(table, prefix + order.to_bytes(8, "big") + node_id.to_bytes(8, "big"),
              legacy if legacy is not None else make())
    await store.write(batch)
    await trio.sleep(SETTLE)
    return (await store.table(table).scan_prefix(prefix, limit=1))[0][1]
