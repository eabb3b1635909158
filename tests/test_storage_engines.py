"""The storage contract (node/storage/api.py, batch.py), on both engines.

Every test that takes `store` or `opener` runs on LMDB (in tmp_path) and on PostgreSQL
(a fresh database on the private server of tests/pgserver.py). PostgreSQL-only tests at
the end cover what only a server has: lost connections, a server that goes away and
comes back, a commit stuck on a synchronous standby, several engines on one database.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import trio
from pgserver import PgServer

from node.config import StorageSection
from node.storage import (
    EXPORT_TABLES,
    TAIL,
    DedupeAck,
    MessageMeta,
    Storage,
    StorageConflict,
    StorageError,
    StorageUnavailable,
    StoredMessage,
    WriteBatch,
    open_storage,
)
from node.storage.lmdb_engine import open_lmdb
from node.storage.pg_schema import SCHEMA_VERSION as PG_SCHEMA_VERSION
from node.storage.postgres import open_postgres
from node.testing import wait_until, wait_until_sync

pytestmark = pytest.mark.engine("lmdb")  # parametrized over both engines by its own `engine` fixture

Opener = Callable[..., AbstractAsyncContextManager[Any]]

# -- fixtures -----------------------------------------------------------------------------


def _opener(engine: str, tmp_path: Path, request: pytest.FixtureRequest, name: str = "db") -> Opener:
    if engine == "lmdb":
        return lambda **kw: open_lmdb(tmp_path / name, **kw)
    dsn = request.getfixturevalue("pg_dsn") if name == "db" else request.getfixturevalue("pg_server").create_database()
    return lambda **kw: open_postgres(dsn, **kw)


@pytest.fixture(params=["lmdb", "postgresql"])
def engine(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def opener(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> Opener:
    """`async with opener(**engine_kwargs) as storage`: open (or reopen) this test's engine."""
    return _opener(engine, tmp_path, request)


@pytest.fixture
async def store(opener: Opener) -> AsyncIterator[Storage]:
    async with opener() as storage:
        yield storage


async def write(storage: Storage, build: Callable[[WriteBatch], None]) -> None:
    batch = WriteBatch()
    build(batch)
    await storage.write(batch)


def message(chat_id: int, seq: int, message_id: int, *, sender: int = 1, kind: str = "text", ts: int = 1000,
            expires_at: int = 0, text: str = "hi") -> tuple[bytes, MessageMeta]:
    """A log entry and its meta, consistent with each other (as the core writes them)."""
    record: dict[str, Any] = {"id": str(message_id), "chat": str(chat_id), "seq": seq, "kind": kind, "ts": ts,
                              "text": text}
    if sender:
        record["from"] = str(sender)
    if expires_at:
        record["expires_at"] = expires_at
    return orjson.dumps(record), MessageMeta(sender, kind, ts, expires_at)


def append(b: WriteBatch, chat_id: int, seq: int, message_id: int, **kw: Any) -> None:
    raw, meta = message(chat_id, seq, message_id, **kw)
    b.append_message(chat_id, seq, message_id, raw, meta)


def user(user_id: int, name: str) -> dict[str, Any]:
    return {"id": str(user_id), "username": name, "display_name": name.title(), "created": 1_700_000_000_000 + user_id,
            "settings": {"theme": "dark", "n": [1, 2.5, None, True]}}


async def everything(storage: Storage) -> dict[str, list[tuple[Any, ...]]]:
    """Every exported row of every table (what a copy moves and verifies)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for table in EXPORT_TABLES:
        out[table] = [row async for page in storage.export(table, page=3) for row in page]
    return out


# -- accounts -------------------------------------------------------------------------------


async def test_users_usernames_and_tokens(store: Storage) -> None:
    names = {1: "alice", 2: "al_x", 3: "alix", 4: "bob", 5: "al%", 6: "Émile"}

    def build(b: WriteBatch) -> None:
        for user_id, name in names.items():
            b.put_user(user_id, user(user_id, name))
            b.add_username(name, user_id)
        b.put_token(b"\x01" * 32, {"user": "1", "device": "phone"})
        b.put_token(b"\x00" * 32, {"user": "1", "device": "laptop"})
        b.put_token(b"\x02" * 32, {"user": "4", "device": "web"})

    await write(store, build)
    assert await store.get_users([1, 4, 99]) == {1: user(1, "alice"), 4: user(4, "bob")}
    assert await store.get_users([]) == {}
    assert await store.user_id_by_name("alice") == 1
    assert await store.user_id_by_name("Émile") == 6
    assert await store.user_id_by_name("nobody") is None
    # prefix search: byte order, wildcards in the prefix are literal, a limit
    assert await store.search_usernames("al", 10) == [("al%", 5), ("al_x", 2), ("alice", 1), ("alix", 3)]
    assert await store.search_usernames("al_", 10) == [("al_x", 2)]
    assert await store.search_usernames("al%", 10) == [("al%", 5)]
    assert await store.search_usernames("al", 2) == [("al%", 5), ("al_x", 2)]
    assert await store.search_usernames("", 100) == sorted((n, i) for i, n in names.items())
    assert await store.search_usernames("z", 10) == []

    assert await store.get_token(b"\x01" * 32) == {"user": "1", "device": "phone"}
    assert await store.get_token(b"\x09" * 32) is None
    assert await store.tokens_of(1) == [(b"\x00" * 32, {"user": "1", "device": "laptop"}),
                                        (b"\x01" * 32, {"user": "1", "device": "phone"})]
    await write(store, lambda b: (b.delete_token(b"\x00" * 32), b.delete_token(b"\x07" * 32),
                                  b.put_token(b"\x01" * 32, {"user": "1", "device": "phone 2"})))
    assert await store.tokens_of(1) == [(b"\x01" * 32, {"user": "1", "device": "phone 2"})]
    assert await store.tokens_of(4) == [(b"\x02" * 32, {"user": "4", "device": "web"})]

    # a record replaced; a name released and taken by someone else
    await write(store, lambda b: (b.put_user(4, {**user(4, "bob"), "display_name": "Robert"}),
                                  b.remove_username("bob"), b.add_username("bobby", 4)))
    assert (await store.get_users([4]))[4]["display_name"] == "Robert"
    assert await store.user_id_by_name("bob") is None
    assert await store.user_id_by_name("bobby") == 4
    await write(store, lambda b: (b.put_user(7, user(7, "bob")), b.add_username("bob", 7)))
    assert await store.user_id_by_name("bob") == 7


async def test_update_user_changes_the_stored_fields_and_nothing_else(store: Storage) -> None:
    """`update_user` works on the stored record, not a copy: two batches that each change
    other fields (as two nodes do at the same moment) both stay; settings merge key by key;
    a tombstone and an absent record are left as they are."""
    await write(store, lambda b: (b.put_user(1, {**user(1, "alice"), "photo": "55"}), b.put_user(2, user(2, "bob")),
                                  b.put_user(3, {"id": "3", "username": "deleted-3", "deleted": 9, "settings": {}})))
    await write(store, lambda b: b.update_user(1, {"display_name": "Alice Liddell"}, settings={"last_seen": "nobody"}))
    await write(store, lambda b: b.update_user(1, {"disabled": 7}, drop=["photo", "absent"],
                                                settings={"theme": "light"}))
    await write(store, lambda b: (b.update_user(2, {}, settings={"read_receipts": False}),
                                  b.update_user(2, {"display_name": "Robert"}),  # later ops of a batch see earlier ones
                                  b.update_user(3, {"display_name": "Back"}), b.update_user(9, {"display_name": "x"})))
    users = await store.get_users([1, 2, 3, 9])
    assert users[1] == {**user(1, "alice"), "display_name": "Alice Liddell", "disabled": 7,
                        "settings": {"theme": "light", "n": [1, 2.5, None, True], "last_seen": "nobody"}}
    assert users[2] == {**user(2, "bob"), "display_name": "Robert",
                        "settings": {**user(2, "bob")["settings"], "read_receipts": False}}
    assert users[3] == {"id": "3", "username": "deleted-3", "deleted": 9, "settings": {}}
    assert 9 not in users


async def test_update_user_with_expect_changes_only_a_record_that_still_holds_those_values(store: Storage) -> None:
    """`expect` makes `update_user` a compare-and-set: a login's rehash of the password it
    checked must not undo a password change that another node committed meanwhile. A
    mismatch changes nothing and refuses nothing else of the batch."""
    await write(store, lambda b: (b.put_user(1, {**user(1, "alice"), "password": "old"}),
                                  b.put_user(2, {**user(2, "bob"), "password": "old"})))
    await write(store, lambda b: b.update_user(1, {"password": "new"}))  # the change, on another node
    await write(store, lambda b: (b.update_user(1, {"password": "old, rehashed"}, expect={"password": "old"}),
                                  b.update_user(2, {"password": "old, rehashed"}, expect={"password": "old"}),
                                  b.update_user(2, {"display_name": "Never"}, expect={"absent": None}),
                                  b.put_meta("same batch", b"stored")))
    users = await store.get_users([1, 2])
    assert users[1]["password"] == "new"
    assert users[2]["password"] == "old, rehashed"
    assert users[2]["display_name"] == user(2, "bob")["display_name"]
    assert await store.get_meta("same batch") == b"stored"


# -- chats and the log ---------------------------------------------------------------------


async def test_chats_members_and_direct_chats(store: Storage) -> None:
    def build(b: WriteBatch) -> None:
        b.put_chat(10, {"id": "10", "kind": "direct", "created": 5})
        b.put_member(10, 1, {"role": "member", "read": 0})
        b.put_member(10, 2, {"role": "member", "read": 3})
        b.add_direct(1, 2, 10)
        b.put_chat(20, {"id": "20", "kind": "group", "title": "g"})
        for user_id in (3, 1, 2):
            b.put_member(20, user_id, {"role": "admin" if user_id == 1 else "member"})
        for seq in range(1, TAIL + 11):
            append(b, 20, seq, 1000 + seq)
        b.set_chat_seq(20, TAIL + 10, 0)
        b.put_chat(30, {"id": "30", "kind": "group", "title": "empty"})

    await write(store, build)
    loaded = await store.load_chats([10, 20, 30, 99])
    assert set(loaded) == {10, 20, 30}
    assert loaded[10].record == {"id": "10", "kind": "direct", "created": 5}
    assert loaded[10].members == {1: {"role": "member", "read": 0}, 2: {"role": "member", "read": 3}}
    assert loaded[10].last_seq == 0 and loaded[10].tail == []
    assert loaded[20].last_seq == TAIL + 10
    assert [seq for seq, _ in loaded[20].tail] == list(range(11, TAIL + 11))  # the newest TAIL, oldest first
    assert loaded[20].tail[-1][1] == message(20, TAIL + 10, 1000 + TAIL + 10)[0]
    assert sorted(loaded[20].members) == [1, 2, 3]
    assert loaded[30].members == {} and loaded[30].last_seq == 0
    assert await store.load_chats([]) == {}

    assert await store.chat_ids_of(1) == {10, 20}
    assert await store.chat_ids_of(3) == {20}
    assert await store.chat_ids_of(9) == set()
    assert await store.direct_chats([(1, 2), (1, 3), (2, 1)]) == {(1, 2): 10}
    assert await store.direct_chats([]) == {}

    # a member record replaced (a former member stays listed); the chat record replaced
    await write(store, lambda b: (b.put_member(20, 3, {"role": "left"}), b.put_chat(20, {"id": "20", "kind": "group",
                                                                                          "title": "h"})))
    again = (await store.load_chats([20]))[20]
    assert again.members[3] == {"role": "left"} and again.record["title"] == "h"
    assert again.last_seq == TAIL + 10


async def test_log_entries_come_back_byte_for_byte_and_page(store: Storage) -> None:
    odd = b'{"id": "7",  "kind":"text", "ts":1, "text":"h\\u00e9 \xc3\xa9 \\"q\\" \\u0000 \xf0\x9f\x98\x80", "n":1.50}'

    def build(b: WriteBatch) -> None:
        b.append_message(5, 1, 7, odd, MessageMeta(0, "text", 1))
        for seq in range(2, 31):
            append(b, 5, seq, 100 + seq)
        append(b, 6, 1, 500)

    await write(store, build)
    entries = await store.read_messages(5, 1, 1000, 100)
    assert [seq for seq, _ in entries] == list(range(1, 31))
    assert entries[0][1] == odd
    assert await store.read_messages(5, 10, 15, 100) == [(s, message(5, s, 100 + s)[0]) for s in range(10, 15)]
    assert [s for s, _ in await store.read_messages(5, 10, 1000, 3)] == [10, 11, 12]
    assert [s for s, _ in await store.read_messages(5, 1, 1000, 4, reverse=True)] == [30, 29, 28, 27]
    assert [s for s, _ in await store.read_messages(5, 1, 12, 3, reverse=True)] == [11, 10, 9]
    assert await store.read_messages(5, 40, 50, 10) == []
    assert await store.read_messages(5, 12, 12, 10) == []
    assert [s for s, _ in await store.read_messages(6, 0, 1 << 62, 10)] == [1]

    found = await store.find_messages([7, 110, 500, 999])
    assert found == {7: StoredMessage(5, 1, odd), 110: StoredMessage(5, 10, message(5, 10, 110)[0]),
                     500: StoredMessage(6, 1, message(6, 1, 500)[0])}

    edited, meta = message(5, 10, 110, text="edited")
    await write(store, lambda b: (b.rewrite_message(5, 10, edited, meta), b.delete_message(5, 11, 111)))
    assert await store.read_messages(5, 10, 12, 10) == [(10, edited)]
    assert (await store.find_messages([110, 111])) == {110: StoredMessage(5, 10, edited)}


async def test_count_unread(store: Storage) -> None:
    def build(b: WriteBatch) -> None:
        append(b, 1, 1, 11, sender=7)
        append(b, 1, 2, 12, sender=8)  # the reader's own
        append(b, 1, 3, 13, sender=7, kind="receipt")
        append(b, 1, 4, 14, sender=0, kind="text")  # from the node
        append(b, 1, 5, 15, sender=7, expires_at=5000)  # expired at now=6000
        append(b, 1, 6, 16, sender=7, expires_at=9000)
        for seq in range(1, 11):
            append(b, 2, seq, 100 + seq, sender=7, kind="image")

    await write(store, build)
    kinds = frozenset({"text", "image"})
    assert await store.count_unread([(1, 1, 6), (2, 1, 10), (3, 1, 5)], 8, kinds, 100, 6000) == {1: 3, 2: 10, 3: 0}
    assert await store.count_unread([(1, 2, 4), (2, 1, 10)], 8, kinds, 4, 6000) == {1: 1, 2: 4}
    assert await store.count_unread([(1, 1, 6)], 8, kinds, 100, 4000) == {1: 4}
    assert await store.count_unread([], 8, kinds, 100, 6000) == {}


async def test_dedupe_records(store: Storage) -> None:
    def build(b: WriteBatch) -> None:
        b.add_dedupe(1, "a", DedupeAck(10, 1, 100, 5000))
        b.add_dedupe(1, "b", DedupeAck(10, 2, 101, 3000))
        b.add_dedupe(2, "a", DedupeAck(11, 1, 102, 3000))
        b.add_dedupe(3, "z", DedupeAck(12, 1, 103, 9000))

    await write(store, build)
    assert await store.get_dedupe([(1, "a"), (2, "a"), (2, "b"), (9, "a")]) == {
        (1, "a"): DedupeAck(10, 1, 100, 5000), (2, "a"): DedupeAck(11, 1, 102, 3000)}
    assert await store.get_dedupe([]) == {}
    assert await store.due_dedupe(5000, 10) == [(1, "b", 3000), (2, "a", 3000), (1, "a", 5000)]  # oldest first
    assert await store.due_dedupe(5000, 2) == [(1, "b", 3000), (2, "a", 3000)]
    assert await store.due_dedupe(2999, 10) == []
    assert await store.due_dedupe(-1, 10) == []
    # deleted only if it is still that send's record
    await write(store, lambda b: (b.delete_dedupe(1, "a", 4999), b.delete_dedupe(1, "b", 3000)))
    assert set(await store.get_dedupe([(1, "a"), (1, "b")])) == {(1, "a")}


async def test_due_expiry(store: Storage) -> None:
    def build(b: WriteBatch) -> None:
        append(b, 1, 1, 11, expires_at=3000)
        append(b, 1, 2, 12)
        append(b, 2, 1, 21, expires_at=2000)
        append(b, 2, 2, 22, expires_at=3000)
        append(b, 3, 1, 31, expires_at=9000)

    await write(store, build)
    assert await store.due_expiry(3000, 10) == [(2, 1, 21, 2000), (1, 1, 11, 3000), (2, 2, 22, 3000)]
    assert await store.due_expiry(3000, 1) == [(2, 1, 21, 2000)]
    assert await store.due_expiry(1999, 10) == []
    await write(store, lambda b: b.delete_message(2, 1, 21, 2000))
    assert await store.due_expiry(10_000, 10) == [(1, 1, 11, 3000), (2, 2, 22, 3000), (3, 1, 31, 9000)]


async def test_blocks_meta_and_plugin_data(store: Storage) -> None:
    def build(b: WriteBatch) -> None:
        b.put_block(1, 2)
        b.put_block(1, 3)
        b.put_block(1, 3)
        b.put_block(2, 1)
        b.put_meta("node_id", b"\x00\x01")
        b.put_meta("other", b"x")
        for i in range(10):
            b.kv_put("media/items", bytes([i]) * 2, b"v%d" % i)
        b.kv_put("media/items2", b"\x00", b"other namespace")
        b.kv_put("media", b"\x05\x05", b"shorter namespace")

    await write(store, build)
    assert await store.blocks_of([1, 2, 3]) == {1: {2, 3}, 2: {1}, 3: set()}
    assert await store.blocks_of([]) == {}
    await write(store, lambda b: (b.delete_block(1, 2), b.delete_block(5, 5)))
    assert await store.blocks_of([1]) == {1: {3}}

    assert await store.get_meta("node_id") == b"\x00\x01"
    assert await store.get_meta("missing") is None
    await write(store, lambda b: (b.put_meta("node_id", b"\x02"), b.delete_meta("other"), b.delete_meta("nope")))
    assert await store.get_meta("node_id") == b"\x02"
    assert await store.get_meta("other") is None

    ns = "media/items"
    assert await store.kv_get(ns, [b"\x01\x01", b"\x09\x09", b"\x00"]) == {b"\x01\x01": b"v1", b"\x09\x09": b"v9"}
    assert await store.kv_get(ns, []) == {}
    assert await store.kv_get("media", [b"\x05\x05"]) == {b"\x05\x05": b"shorter namespace"}
    assert await store.kv_count(ns) == 10
    assert await store.kv_count("media/items2") == 1
    assert await store.kv_count("nothing") == 0
    scan = await store.kv_scan(ns, b"\x02", b"\x05", 100)
    assert scan == [(b"\x02\x02", b"v2"), (b"\x03\x03", b"v3"), (b"\x04\x04", b"v4")]
    assert [k for k, _ in await store.kv_scan(ns, b"\x07", None, 100)] == [b"\x07\x07", b"\x08\x08", b"\x09\x09"]
    assert [k for k, _ in await store.kv_scan(ns, b"", None, 2)] == [b"\x00\x00", b"\x01\x01"]
    assert [k for k, _ in await store.kv_scan(ns, b"", None, 2, reverse=True)] == [b"\x09\x09", b"\x08\x08"]
    assert [k for k, _ in await store.kv_scan(ns, b"\x02", b"\x05", 2, reverse=True)] == [b"\x04\x04", b"\x03\x03"]
    await write(store, lambda b: (b.kv_delete(ns, b"\x00\x00"), b.kv_put(ns, b"\x01\x01", b"new")))
    assert await store.kv_count(ns) == 9
    assert (await store.kv_scan(ns, b"", None, 1)) == [(b"\x01\x01", b"new")]
    # a range goes in one op: start included, end excluded, other namespaces untouched
    await write(store, lambda b: (b.kv_delete_range(ns, b"\x03", b"\x06\x06"), b.kv_put(ns, b"\x04\x00", b"re")))
    assert [k for k, _ in await store.kv_scan(ns, b"", None, 100)] == [
        b"\x01\x01", b"\x02\x02", b"\x04\x00", b"\x06\x06", b"\x07\x07", b"\x08\x08", b"\x09\x09"]
    await write(store, lambda b: b.kv_delete_range(ns, b"\x00", b"\xff"))
    assert await store.kv_count(ns) == 0
    assert await store.kv_count("media/items2") == 1 and await store.kv_count("media") == 1
    await write(store, lambda b: b.kv_delete_range("empty/ns", b"", b"\xff"))  # nothing to delete


# -- conflicts: the whole transaction is refused, nothing of it applied --------------------


def _seed(b: WriteBatch) -> None:
    b.put_user(1, user(1, "alice"))
    b.add_username("alice", 1)
    b.put_chat(10, {"id": "10", "kind": "group"})
    append(b, 10, 1, 101)
    b.set_chat_seq(10, 1, 0)
    b.add_dedupe(1, "c1", DedupeAck(10, 1, 101, 1000))
    b.add_direct(1, 2, 10)


CONFLICTS: dict[str, Callable[[WriteBatch], None]] = {
    "seq taken twice": lambda b: append(b, 10, 1, 999),
    "message id taken twice": lambda b: append(b, 10, 3, 101),
    "seq taken twice in one batch": lambda b: (append(b, 10, 5, 998), append(b, 10, 5, 999)),
    "client_msg_id twice": lambda b: b.add_dedupe(1, "c1", DedupeAck(10, 2, 102, 2000)),
    "username twice": lambda b: b.add_username("alice", 2),
    "username twice, same user": lambda b: b.add_username("alice", 1),
    "direct chat twice": lambda b: b.add_direct(1, 2, 11),
    "set_chat_seq behind": lambda b: b.set_chat_seq(10, 2, 0),
    "set_chat_seq ahead": lambda b: b.set_chat_seq(10, 5, 4),
    "set_chat_seq of a chat without a seq": lambda b: b.set_chat_seq(77, 2, 1),
}


@pytest.mark.parametrize("case", list(CONFLICTS))
async def test_a_conflict_applies_nothing(store: Storage, case: str) -> None:
    await write(store, _seed)
    before = await everything(store)

    def build(b: WriteBatch) -> None:  # innocent writes around the conflicting one
        b.put_user(2, user(2, "bob"))
        b.add_username("bob", 2)
        b.kv_put("p/s", b"k", b"v")
        append(b, 10, 2, 102)
        b.set_chat_seq(10, 2, 1)
        CONFLICTS[case](b)
        b.put_meta("after", b"x")

    with pytest.raises(StorageConflict):
        await write(store, build)
    assert await everything(store) == before
    assert await store.user_id_by_name("bob") is None
    assert (await store.load_chats([10]))[10].last_seq == 1
    # and the engine goes on writing
    await write(store, lambda b: (append(b, 10, 2, 102), b.set_chat_seq(10, 2, 1)))
    assert (await store.load_chats([10]))[10].last_seq == 2


async def test_set_chat_seq_compare_and_set(store: Storage) -> None:
    await write(store, lambda b: b.set_chat_seq(5, 3, 0))  # a chat with no seq yet counts as 0
    await write(store, lambda b: (b.set_chat_seq(5, 4, 3), b.set_chat_seq(5, 6, 4)))  # in order, in one batch
    await write(store, lambda b: b.put_chat(5, {"id": "5", "kind": "group"}))
    assert (await store.load_chats([5]))[5].last_seq == 6
    await write(store, lambda b: b.set_chat_seq(5, 2, None))  # unconditional (copies, migrations)
    assert (await store.load_chats([5]))[5].last_seq == 2
    with pytest.raises(StorageConflict):
        await write(store, lambda b: b.set_chat_seq(5, 3, 6))


async def test_the_writer_fails_only_the_conflicting_request(store: Storage) -> None:
    """A group commit refused for one request is retried request by request: the others
    commit. Commit hooks put requests into the same transaction deterministically."""
    await write(store, _seed)
    queued: list[WriteBatch] = []

    def hook() -> WriteBatch:
        return queued.pop() if queued else WriteBatch()

    store.add_commit_hook(hook)
    bad = WriteBatch()
    append(bad, 10, 1, 555)  # seq 1 is taken
    bad.put_meta("bad", b"1")
    queued.append(bad)
    good = WriteBatch()
    good.put_meta("good", b"1")
    await store.write(good)  # shares its transaction with `bad`: bad fails alone
    assert await store.get_meta("good") == b"1"
    assert await store.get_meta("bad") is None

    good2 = WriteBatch()
    good2.put_meta("hooked", b"1")
    queued.append(good2)
    with pytest.raises(StorageConflict):
        await write(store, lambda b: (b.put_meta("caller", b"1"), append(b, 10, 1, 556)))
    # the caller is answered as soon as its own retry fails; the writer then commits the
    # rest of the group, before anything queued later (a barrier write)
    await write(store, lambda b: b.put_meta("barrier", b""))
    assert await store.get_meta("hooked") == b"1"
    assert await store.get_meta("caller") is None

    # many concurrent callers, one of them conflicting: only that one fails
    results: dict[int, str] = {}

    async def send(i: int) -> None:
        try:
            await write(store, lambda b: (b.put_meta(f"m{i}", b"x"), append(b, 10, 1 if i == 7 else 100 + i, 700 + i)))
            results[i] = "ok"
        except StorageConflict:
            results[i] = "conflict"

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(send, i)
    assert {i for i, r in results.items() if r == "conflict"} == {7}
    assert len(results) == 20
    assert await store.get_meta("m7") is None and await store.get_meta("m8") == b"x"


async def test_commit_hooks_ride_along(store: Storage) -> None:
    calls: list[int] = []
    pending: dict[str, bytes] = {}

    def hook() -> WriteBatch:
        calls.append(1)
        batch = WriteBatch()
        for key, value in pending.items():
            batch.put_meta(key, value)
        pending.clear()
        return batch

    store.add_commit_hook(hook)
    pending["seen:1"] = b"100"
    await write(store, lambda b: b.put_meta("x", b"1"))
    assert calls and await store.get_meta("seen:1") == b"100"  # committed with the caller's write
    before = store.statistics()["committed_ops"]
    await write(store, lambda b: b.put_meta("y", b"1"))
    assert store.statistics()["committed_ops"] == before + 1  # an empty hook batch adds nothing


async def test_data_survives_reopen_and_reports_itself(opener: Opener, engine: str) -> None:
    async with opener() as storage:
        await write(storage, lambda b: (b.put_user(1, user(1, "alice")), b.put_meta("k", b"v")))
        info = storage.info
        stats = storage.statistics()
    async with opener() as storage:
        assert await storage.get_users([1]) == {1: user(1, "alice")}
        assert await storage.get_meta("k") == b"v"
    assert info.name == engine
    assert info.schema_version >= 1
    assert stats["engine"] == engine and stats["commits"] >= 1 and stats["committed_ops"] >= 2


# -- copying between engines -----------------------------------------------------------------


async def fill(storage: Storage) -> None:
    def build(b: WriteBatch) -> None:
        for user_id, name in ((1, "alice"), (2, "bob"), (3, "Zoë")):
            b.put_user(user_id, user(user_id, name))
            b.add_username(name, user_id)
        b.put_token(b"\x03" * 32, {"user": "1", "device": "a"})
        b.put_token(b"\x01" * 32, {"user": "2", "device": "b"})
        b.put_chat(10, {"id": "10", "kind": "direct"})
        b.put_chat(11, {"id": "11", "kind": "group", "title": "T"})
        b.add_direct(1, 2, 10)
        for chat_id, users in ((10, (1, 2)), (11, (1, 2, 3))):
            for user_id in users:
                b.put_member(chat_id, user_id, {"role": "member", "read": 1})
        for seq in range(1, 8):
            append(b, 10, seq, 100 + seq, sender=1 + seq % 2, expires_at=5000 if seq == 3 else 0)
            append(b, 11, seq, 200 + seq, sender=0 if seq == 1 else 3, kind="system" if seq == 1 else "text")
        b.set_chat_seq(10, 7, 0)
        b.set_chat_seq(11, 7, 0)
        b.add_dedupe(1, "x-1", DedupeAck(10, 1, 101, 1000))
        b.add_dedupe(1, "x-2", DedupeAck(10, 3, 103, 1003))
        b.add_dedupe(3, "é", DedupeAck(11, 2, 202, 1004))
        b.put_block(3, 1)
        b.put_meta("node_id", b"\x00\x07")
        b.put_meta("Z", b"upper")
        for i in range(5):
            b.kv_put("push/targets", b"t%d" % i, b"{}")
        b.kv_put("push", b"\xff", b"short")

    await write(storage, build)


@pytest.mark.parametrize("direction", ["lmdb->postgresql", "postgresql->lmdb"])
async def test_export_import_between_engines(direction: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    source_engine, target_engine = direction.split("->")
    async with _opener(source_engine, tmp_path, request)() as source, \
            _opener(target_engine, tmp_path, request, name="target")() as target:
        await fill(source)
        exported = await everything(source)
        assert all(exported[table] for table in EXPORT_TABLES)
        for table in EXPORT_TABLES:
            async for page in source.export(table, page=4):
                await target.import_rows(table, page)
        assert await everything(target) == exported
        # the copy works through the interface too
        assert await target.user_id_by_name("Zoë") == 3
        assert (await target.load_chats([10]))[10].last_seq == 7
        assert await target.due_expiry(5000, 10) == [(10, 3, 103, 5000)]
        assert await target.get_dedupe([(3, "é")]) == {(3, "é"): DedupeAck(11, 2, 202, 1004)}
        assert await target.count_unread([(11, 1, 7)], 1, frozenset({"text"}), 100, 0) == {11: 6}

        # running the copy again changes nothing; rows already stored are kept as they are
        await write(target, lambda b: b.put_meta("node_id", b"changed"))
        for table in EXPORT_TABLES:
            async for page in source.export(table):
                await target.import_rows(table, page)
        again = await everything(target)
        assert again["meta"] == [(k, b"changed" if k == "node_id" else v) for k, v in exported["meta"]]
        assert {t: rows for t, rows in again.items() if t != "meta"} == {
            t: rows for t, rows in exported.items() if t != "meta"}


# -- schema versions ---------------------------------------------------------------------------


async def _set_schema_version(engine: str, storage: Storage, version: int) -> None:
    if engine == "lmdb":
        await write(storage, lambda b: b.put_meta("schema_version", str(version).encode()))
    else:
        dsn = storage.dsn  # type: ignore[attr-defined]
        await trio.to_thread.run_sync(_pg_execute, dsn, f"INSERT INTO schema_version (version) VALUES ({version})")


def _pg_execute(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


async def test_a_newer_schema_is_refused(opener: Opener, engine: str) -> None:
    async with opener() as storage:
        current = storage.info.schema_version
        await _set_schema_version(engine, storage, 99)
    with pytest.raises(StorageError) as refused:
        async with opener():
            pass
    message_ = str(refused.value)
    assert "schema version 99" in message_ and f"({current})" in message_ and "\n" not in message_


async def test_postgres_creates_its_schema_once_when_nodes_start_together(pg_dsn: str) -> None:
    opened: list[int] = []

    async def node() -> None:
        async with open_postgres(pg_dsn, pool_size=2) as storage:
            opened.append(storage.info.schema_version)

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(node)
    assert opened == [PG_SCHEMA_VERSION] * 4
    rows = await trio.to_thread.run_sync(_pg_execute, pg_dsn, "SELECT version FROM schema_version")
    assert rows == [(version,) for version in range(1, PG_SCHEMA_VERSION + 1)]
    tables = await trio.to_thread.run_sync(
        _pg_execute, pg_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
    assert [t for (t,) in tables] == ["blocks", "chats", "dedupe", "direct_chats", "members", "messages", "meta",
                                      "plugin_kv", "schema_version", "tokens", "users"]


async def test_postgres_open_errors_are_one_line() -> None:
    with pytest.raises(StorageError, match="storage.dsn is required"):
        async with open_postgres(""):
            pass
    with pytest.raises(StorageError, match="cannot open PostgreSQL storage") as refused:
        async with open_postgres("host=127.0.0.1 port=1 user=chat dbname=chat", commit_timeout=1.0):
            pass
    assert "\n" not in str(refused.value)


async def test_the_configured_engine_opens(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    dsn = request.getfixturevalue("pg_dsn") if engine == "postgresql" else ""
    section = StorageSection(engine=engine, dsn=dsn, pool_size=2, commit_timeout=5.0)
    async with open_storage(section, tmp_path) as storage:
        await write(storage, lambda b: b.put_meta("k", b"v"))
        assert storage.info.name == engine and await storage.get_meta("k") == b"v"


async def test_postgres_info_hides_the_password(pg_dsn: str) -> None:
    async with open_postgres(pg_dsn + " password=s3cret") as storage:
        assert storage.info.name == "postgresql"
        assert storage.info.schema_version == PG_SCHEMA_VERSION
        assert "s3cret" not in storage.info.location and "dbname=" in storage.info.location
        assert "s3cret" not in repr(storage.statistics())


# -- several writers on one database ------------------------------------------------------------


async def test_two_writers_race_for_each_seq(engine: str, opener: Opener, request: pytest.FixtureRequest) -> None:
    """Two nodes that both believe they own chat 1 take seqs from the same expected value:
    for every seq exactly one wins, and what is stored is the winner's. On PostgreSQL the
    writers are two engines on one database; LMDB has one writer per node, so two tasks."""
    rounds = 40
    async with opener() as first:
        if engine == "postgresql":
            second_cm: AbstractAsyncContextManager[Any] = opener()
        else:
            second_cm = _Same(first)
        async with second_cm as second:
            winners: dict[int, list[str]] = {}

            async def take(storage: Storage, who: str, seq: int, message_id: int) -> None:
                batch = WriteBatch()
                append(batch, 1, seq, message_id, text=who)
                batch.set_chat_seq(1, seq, seq - 1)
                try:
                    await storage.write(batch)
                    winners.setdefault(seq, []).append(who)
                except StorageConflict:
                    pass

            for seq in range(1, rounds + 1):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(take, first, "a", seq, 10_000 + seq)
                    nursery.start_soon(take, second, "b", seq, 20_000 + seq)
            assert all(len(winners.get(seq, [])) == 1 for seq in range(1, rounds + 1)), winners
            stored = await first.read_messages(1, 1, rounds + 1, 1000)
            assert [seq for seq, _ in stored] == list(range(1, rounds + 1))
            assert [orjson.loads(raw)["text"] for _, raw in stored] == [winners[s][0] for s in range(1, rounds + 1)]


class _Same:
    """An async context manager yielding an engine that is already open."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def __aenter__(self) -> Storage:
        return self.storage

    async def __aexit__(self, *exc: object) -> None:
        return None


# -- PostgreSQL: connections and servers that fail ------------------------------------------------


async def until_in_thread(condition: Callable[[], Any], timeout: float = 20.0) -> None:
    """`wait_until` with `condition` run in a thread (it asks PostgreSQL)."""
    await wait_until(partial(trio.to_thread.run_sync, condition), timeout)


def _chatnode_backends(dsn: str) -> int:
    dbname = dict(p.split("=", 1) for p in dsn.split())["dbname"]
    return _pg_execute(dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'chatnode' "
                            f"AND datname = '{dbname}' AND pid <> pg_backend_pid()")[0][0]


async def test_postgres_replaces_connections_terminated_between_writes(pg_dsn: str) -> None:
    async with open_postgres(pg_dsn, pool_size=3) as storage:
        await write(storage, lambda b: b.put_meta("a", b"1"))
        assert await storage.get_meta("a") == b"1"
        reconnects = storage.statistics()["reconnects"]
        await trio.to_thread.run_sync(_pg_execute, pg_dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                                           "WHERE application_name = 'chatnode'")
        await until_in_thread(lambda: _chatnode_backends(pg_dsn) == 0)
        # nothing was pending: the write and the read go through on new connections
        await write(storage, lambda b: b.put_meta("b", b"2"))
        assert await storage.get_meta("b") == b"2"
        assert await storage.get_meta("a") == b"1"
        assert storage.statistics()["reconnects"] == reconnects + 1


async def test_postgres_server_down_then_back() -> None:
    with PgServer(fsync=True) as server:
        dsn = server.create_database()
        async with open_postgres(dsn, pool_size=3, commit_timeout=2.0) as storage:
            await write(storage, lambda b: (append(b, 1, 1, 11), b.set_chat_seq(1, 1, 0)))
            await trio.to_thread.run_sync(server.crash)

            with pytest.raises(StorageUnavailable) as failed:
                await write(storage, lambda b: (append(b, 1, 2, 12), b.set_chat_seq(1, 2, 1)))
            assert failed.value.unknown is False  # refused before anything was sent
            with pytest.raises(StorageUnavailable):
                await storage.read_messages(1, 1, 10, 10)

            await trio.to_thread.run_sync(server.resume)
            await write(storage, lambda b: (append(b, 1, 2, 12), b.set_chat_seq(1, 2, 1)))
            assert [seq for seq, _ in await storage.read_messages(1, 1, 10, 10)] == [1, 2]
            assert storage.statistics()["unknown_outcomes"] == 0


async def test_postgres_reads_neither_hang_through_an_outage_nor_after_it() -> None:
    """The read pool gives up reconnecting after a second; a read waiting for it then must
    not sit out the rest of commit_timeout: during an outage reads are refused within
    about two seconds, and once the server is back the next read gets through at once,
    also when the outage outlasted the pool's reconnect attempts."""
    with PgServer() as server:
        dsn = server.create_database()
        async with open_postgres(dsn, pool_size=3, commit_timeout=20.0) as storage:
            await write(storage, lambda b: b.put_meta("a", b"1"))
            assert await storage.get_meta("a") == b"1"
            await trio.to_thread.run_sync(server.kill)
            for _ in range(3):  # the first finds its connection dead; later ones find no server
                started = time.monotonic()
                with pytest.raises(StorageUnavailable), trio.fail_after(15):
                    await storage.get_meta("a")
                assert time.monotonic() - started < 4.0
            await wait_until(storage._pool_unreachable.is_set, timeout=15)  # the pool has given up reconnecting
            outcome: list[Any] = []

            async def waiting_read() -> None:  # asked during the outage, answered after it
                started = time.monotonic()
                try:
                    outcome.append(await storage.get_meta("a"))
                except StorageUnavailable as exc:
                    outcome.append(exc)
                outcome.append(time.monotonic() - started)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiting_read)
                await trio.to_thread.run_sync(server.resume)
                back = time.monotonic()

                async def read() -> bool:
                    try:
                        return await storage.get_meta("a") == b"1"
                    except StorageUnavailable:
                        return False

                await wait_until(read, 15, interval=0.05)
                assert time.monotonic() - back < 3.0
            assert outcome[-1] < 6.0, outcome  # not the 20 s of commit_timeout


async def test_postgres_commit_stuck_on_a_missing_standby_is_never_acknowledged() -> None:
    """With synchronous_standby_names naming a standby that never comes, every COMMIT
    waits (durable locally, not replicated): the write must fail as unknown after
    commit_timeout, and the engine must carry on once commits complete again."""
    with PgServer() as server:
        dsn = server.create_database()
        async with open_postgres(dsn, pool_size=2, commit_timeout=1.0) as storage:
            await write(storage, lambda b: b.put_meta("before", b"1"))
            await trio.to_thread.run_sync(_set_standbys, server, "ghost")

            started = time.monotonic()
            with pytest.raises(StorageUnavailable) as failed, trio.fail_after(30):
                await write(storage, lambda b: (append(b, 1, 1, 11), b.set_chat_seq(1, 1, 0)))
            elapsed = time.monotonic() - started
            assert failed.value.unknown is True
            assert 1.0 <= elapsed < 8.0
            assert storage.statistics()["commit_timeouts"] == 1
            assert await storage.get_meta("before") == b"1"  # reads do not wait for the standby

            # a connection lost while its COMMIT waits: unknown as well, at once
            async with open_postgres(dsn, pool_size=2, commit_timeout=60.0) as patient:
                outcome: list[BaseException] = []

                async def send() -> None:
                    try:
                        await write(patient, lambda b: b.put_meta("lost", b"1"))
                    except StorageError as exc:
                        outcome.append(exc)

                with trio.fail_after(30):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(send)
                        await until_in_thread(lambda: _pg_execute(dsn, _KILL_SYNCREP_WAITERS)[0][0] == 1)
                assert len(outcome) == 1 and isinstance(outcome[0], StorageUnavailable) and outcome[0].unknown

            await trio.to_thread.run_sync(_set_standbys, server, "")
            # the unacknowledged commit is durable locally (visible once its wait was
            # cancelled): that is why its outcome is "unknown", not "failed"
            await until_in_thread(lambda: _pg_execute(dsn, "SELECT count(*) FROM messages")[0][0] == 1)
            with pytest.raises(StorageConflict):  # the client's retry is told it already happened
                await write(storage, lambda b: (append(b, 1, 1, 11), b.set_chat_seq(1, 1, 0)))
            await write(storage, lambda b: (append(b, 1, 2, 12), b.set_chat_seq(1, 2, 1)))
            assert (await storage.load_chats([1])) == {}  # no chat record, only its seq
            assert [seq for seq, _ in await storage.read_messages(1, 1, 10, 10)] == [1, 2]


_KILL_SYNCREP_WAITERS = ("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                         "WHERE application_name = 'chatnode' AND wait_event = 'SyncRep'")


def _set_standbys(server: PgServer, names: str) -> None:
    server.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{names}'")
    server.execute("SELECT pg_reload_conf()")
    wait_until_sync(lambda: server.execute("SHOW synchronous_standby_names")[0][0] == names)  # a new session sees the reload


async def test_postgres_fails_over_to_a_promoted_standby() -> None:
    """A primary with a synchronous standby, a multi-host DSN: after the primary dies and
    the standby is promoted, the engine finds the new primary by itself and every
    acknowledged write is there."""
    with PgServer() as primary:
        dbname = primary.create_database().rsplit("dbname=", 1)[1]
        with primary.replica("standby1") as standby:
            await trio.to_thread.run_sync(_set_standbys, primary, "standby1")
            await until_in_thread(lambda: primary.execute(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'") == [("sync",)])
            dsn = (f"host=127.0.0.1,127.0.0.1 port={primary.port},{standby.port} user=chat dbname={dbname} "
                   "target_session_attrs=read-write")
            async with open_postgres(dsn, pool_size=3, commit_timeout=5.0) as storage:
                for seq in range(1, 51):
                    await write(storage, lambda b, s=seq: (append(b, 1, s, 100 + s), b.set_chat_seq(1, s, s - 1)))
                await trio.to_thread.run_sync(primary.crash)
                await trio.to_thread.run_sync(standby.promote)
                # nothing was in flight: the next write reconnects to the new primary and succeeds
                await write(storage, lambda b: (append(b, 1, 51, 151), b.set_chat_seq(1, 51, 50)))
                assert [seq for seq, _ in await storage.read_messages(1, 1, 100, 100)] == list(range(1, 52))
                assert f"port={standby.port}" in await trio.to_thread.run_sync(
                    lambda: _pg_execute(dsn, "SELECT 'port=' || current_setting('port')")[0][0])
