"""The LMDB layer: group commit, durability across reopen, map growth, schema version."""

from __future__ import annotations

import pytest
import trio

from node.storage import SCHEMA_VERSION, StorageError, WriteBatch, open_storage
from node.storage.keys import u64


async def test_concurrent_writes_share_commits(tmp_path):
    async with open_storage(tmp_path / "db") as storage:

        async def writer(i: int) -> None:
            batch = WriteBatch()
            batch.put("meta", b"k%03d" % i, b"v")
            await storage.write(batch)

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(writer, i)
        assert storage.writer.committed_ops >= 200
        assert storage.writer.commits < 200  # batched: fewer transactions than writes
        assert storage.get("meta", b"k199") == b"v"


async def test_data_survives_reopen(tmp_path):
    async with open_storage(tmp_path / "db") as storage:
        batch = WriteBatch()
        batch.put("users", u64(1), b"alice")
        batch.put("users", u64(2), b"bob")
        batch.delete("users", u64(2))
        await storage.write(batch)
    async with open_storage(tmp_path / "db") as storage:
        assert storage.get("users", u64(1)) == b"alice"
        assert storage.get("users", u64(2)) is None


async def test_map_grows_when_full_and_reads_keep_working(tmp_path):
    async with open_storage(tmp_path / "db", map_size=1 << 20, max_map_size=64 << 20) as storage:
        for round_ in range(20):
            batch = WriteBatch()
            for i in range(50):
                batch.put("log", u64(round_ * 100 + i), b"x" * 4000)
            reader = storage.read_in_thread(lambda txn: txn.stat(storage.handles["log"])["entries"])
            await storage.write(batch)
            await reader
        assert storage.env.info()["map_size"] > 1 << 20
        assert storage.get("log", u64(1949)) == b"x" * 4000


async def test_full_map_at_the_limit_fails_clearly_and_writes_nothing(tmp_path):
    async with open_storage(tmp_path / "db", map_size=1 << 20, max_map_size=1 << 20) as storage:
        batch = WriteBatch()
        for i in range(600):
            batch.put("log", u64(i), b"x" * 4000)
        with pytest.raises(StorageError, match="max_map_size_mb"):
            await storage.write(batch)
        assert storage.get("log", u64(0)) is None
        small = WriteBatch()
        small.put("log", u64(1), b"ok")
        await storage.write(small)  # the node keeps working
        assert storage.get("log", u64(1)) == b"ok"


async def test_newer_schema_is_refused(tmp_path):
    async with open_storage(tmp_path / "db") as storage:
        assert storage.get("meta", b"schema_version") == str(SCHEMA_VERSION).encode()
        batch = WriteBatch()
        batch.put("meta", b"schema_version", str(SCHEMA_VERSION + 1).encode())
        await storage.write(batch)
    with pytest.raises(StorageError, match="newer than this chatnode"):
        async with open_storage(tmp_path / "db"):
            pass


async def test_scan_forward_and_backward(tmp_path):
    async with open_storage(tmp_path / "db") as storage:
        batch = WriteBatch()
        for i in range(1, 11):
            batch.put("log", u64(i), b"%d" % i)
        await storage.write(batch)
        with storage.read() as txn:
            assert [v for _, v in storage.scan(txn, "log", u64(3), u64(6))] == [b"3", b"4", b"5"]
            assert [v for _, v in storage.scan(txn, "log", u64(3), u64(6), reverse=True)] == [b"5", b"4", b"3"]
            assert [v for _, v in storage.scan(txn, "log", u64(8), u64(100), reverse=True, limit=2)] == [b"10", b"9"]
