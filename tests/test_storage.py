"""The LMDB engine's own behaviour: group commit, reopen, map growth, schema versions.

What both engines must do alike is in tests/test_storage_engines.py.
"""

from __future__ import annotations

import lmdb
import orjson
import pytest
import trio

from node.storage import MessageMeta, StorageError, WriteBatch
from node.storage.lmdb_engine import SCHEMA_VERSION, open_lmdb

pytestmark = pytest.mark.engine("lmdb")  # the LMDB engine's own behaviour


def message(chat_id: int, seq: int, size: int = 10) -> tuple[bytes, MessageMeta]:
    raw = orjson.dumps({"id": str(seq), "chat": str(chat_id), "seq": seq, "kind": "text", "ts": 1, "text": "x" * size})
    return raw, MessageMeta(1, "text", 1)


async def test_concurrent_writes_share_commits(tmp_path):
    async with open_lmdb(tmp_path / "db") as storage:

        async def writer(i: int) -> None:
            batch = WriteBatch()
            batch.put_meta(f"k{i:03d}", b"v")
            await storage.write(batch)

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(writer, i)
        assert storage.writer.committed_ops >= 200
        assert storage.writer.commits < 200  # batched: fewer transactions than writes
        assert await storage.get_meta("k199") == b"v"


async def test_data_survives_reopen(tmp_path):
    async with open_lmdb(tmp_path / "db") as storage:
        batch = WriteBatch()
        batch.put_user(1, {"id": "1", "username": "alice"})
        batch.put_user(2, {"id": "2", "username": "bob"})
        await storage.write(batch)
    async with open_lmdb(tmp_path / "db") as storage:
        assert await storage.get_users([1, 2, 3]) == {1: {"id": "1", "username": "alice"},
                                                     2: {"id": "2", "username": "bob"}}


async def test_map_grows_when_full_and_reads_keep_working(tmp_path):
    async with open_lmdb(tmp_path / "db", map_size=1 << 20, max_map_size=64 << 20) as storage:
        for round_ in range(20):
            batch = WriteBatch()
            for i in range(50):
                seq = round_ * 50 + i + 1
                batch.append_message(7, seq, seq, *message(7, seq, 4000))
            reader = storage.read_messages(7, 1, 10_000, 10_000)
            await storage.write(batch)
            await reader
        assert storage.env.info()["map_size"] > 1 << 20
        assert [seq for seq, _ in await storage.read_messages(7, 999, 1001, 10)] == [999, 1000]


async def test_full_map_at_the_limit_fails_clearly_and_writes_nothing(tmp_path):
    async with open_lmdb(tmp_path / "db", map_size=1 << 20, max_map_size=1 << 20) as storage:
        batch = WriteBatch()
        for seq in range(1, 601):
            batch.append_message(7, seq, seq, *message(7, seq, 4000))
        with pytest.raises(StorageError, match="max_map_size_mb"):
            await storage.write(batch)
        assert await storage.read_messages(7, 1, 1000, 10) == []
        small = WriteBatch()
        small.append_message(7, 1, 1, *message(7, 1))
        await storage.write(small)  # the node keeps working
        assert [seq for seq, _ in await storage.read_messages(7, 1, 1000, 10)] == [1]


async def test_newer_schema_is_refused(tmp_path):
    async with open_lmdb(tmp_path / "db") as storage:
        assert storage.info.schema_version == SCHEMA_VERSION
    env = lmdb.open(str(tmp_path / "db"), max_dbs=64)
    with env.begin(write=True) as txn:
        txn.put(b"schema_version", str(SCHEMA_VERSION + 1).encode(), db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(StorageError, match="newer than this chatnode"):
        async with open_lmdb(tmp_path / "db"):
            pass


async def test_files_are_private(tmp_path):
    async with open_lmdb(tmp_path / "db"):
        pass
    assert (tmp_path / "db").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "db" / "data.mdb").stat().st_mode & 0o777 == 0o600


async def test_a_version_2_data_dir_moves_plugin_data_into_namespaces_and_indexes_tokens(tmp_path):
    """Schema 3 folds the built-in plugins' databases into `plugin_kv` and adds the
    per-user token index; nothing of theirs is lost."""
    env = lmdb.open(str(tmp_path / "db"), max_dbs=64)
    with env.begin(write=True) as txn:
        txn.put(b"schema_version", b"2", db=env.open_db(b"meta", txn=txn))
        txn.put(b"\x00" * 7 + b"\x05", b"\x00" * 7 + b"\x09", db=env.open_db(b"lastseen", txn=txn))
        txn.put(b"item", b"record", db=env.open_db(b"media_items", txn=txn))
        txn.put(b"h" * 32, orjson.dumps({"user": "42", "device": "1", "name": "", "created": 0}),
                db=env.open_db(b"tokens", txn=txn))
    env.close()
    async with open_lmdb(tmp_path / "db") as storage:
        assert storage.info.schema_version == SCHEMA_VERSION
        assert await storage.kv_get("lastseen/times", [b"\x00" * 7 + b"\x05"]) == {b"\x00" * 7 + b"\x05": b"\x00" * 7 + b"\x09"}
        assert await storage.kv_get("media/items", [b"item"]) == {b"item": b"record"}
        assert [h for h, _ in await storage.tokens_of(42)] == [b"h" * 32]
        with storage.env.begin() as txn:
            names = {bytes(k) for k, _ in txn.cursor()}
        assert b"lastseen" not in names and b"media_items" not in names
