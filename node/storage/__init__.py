"""Durable storage: one interface (`Storage`, node/storage/api.py), two engines.

- ``lmdb`` (node/storage/lmdb_engine.py): the embedded default for one node, under
  ``data_dir/db``; needs no server.
- ``postgresql`` (node/storage/postgres.py): for a cluster, whose nodes share their
  durable state in a database that already replicates and fails over.

The core and the plugins see only the interface; nothing above this package imports an
engine's driver.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

from .api import (
    EXPORT_TABLES,
    TAIL,
    EngineInfo,
    LoadedChat,
    Storage,
    StorageConflict,
    StorageError,
    StorageUnavailable,
    StoredMessage,
)
from .batch import DedupeAck, MessageMeta, WriteBatch

MB = 1024 * 1024


class StorageSettings(Protocol):
    """The ``[storage]`` settings an engine is opened with (node.config.StorageSection,
    a frozen class: hence read-only properties)."""

    @property
    def engine(self) -> str: ...
    @property
    def dsn(self) -> str: ...
    @property
    def pool_size(self) -> int: ...
    @property
    def commit_timeout(self) -> float: ...
    @property
    def map_size_mb(self) -> int: ...
    @property
    def max_map_size_mb(self) -> int: ...
    @property
    def max_batch(self) -> int: ...
    @property
    def sync(self) -> bool: ...
    @property
    def dedupe_retention(self) -> float: ...


@contextlib.asynccontextmanager
async def open_storage(
    section: StorageSettings, data_dir: Path, *, now: Callable[[], int] | None = None
) -> AsyncIterator[Storage]:
    """Open the configured engine, run its writer, and close it (committing what is
    queued) on exit. Raises `StorageError` with a one-line reason if it cannot open."""
    if section.engine == "postgresql":
        from .postgres import open_postgres

        async with open_postgres(
            section.dsn, pool_size=section.pool_size, max_batch=section.max_batch,
            commit_timeout=section.commit_timeout,
        ) as storage:
            yield storage
        return
    from .lmdb_engine import open_lmdb

    async with open_lmdb(
        data_dir / "db",
        map_size=section.map_size_mb * MB,
        max_map_size=section.max_map_size_mb * MB,
        max_batch=section.max_batch,
        sync=section.sync,
        dedupe_retention_ms=int(section.dedupe_retention * 1000),
        now=now,
    ) as storage:
        yield storage


__all__ = [
    "EXPORT_TABLES",
    "TAIL",
    "DedupeAck",
    "EngineInfo",
    "LoadedChat",
    "MessageMeta",
    "Storage",
    "StorageConflict",
    "StorageError",
    "StorageUnavailable",
    "StoredMessage",
    "WriteBatch",
    "open_storage",
]
