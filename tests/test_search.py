"""Message search: the engines' full-text search (SQLite FTS5 beside LMDB, PostgreSQL's own)
and the search API over the chats a user can read, with membership windows, clearing,
deletions, edits, expiry and deleting for me respected; history around a message."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import trio
from conftest import make_config

from node.client import ClientError
from node.config import StorageSection
from node.storage import MessageMeta, WriteBatch, open_storage
from node.testing import new_user, running_node, storage_section, wait_until


async def expect_error(code: str, coro) -> ClientError:
    with pytest.raises(ClientError) as info:
        await coro
    assert info.value.code == code, info.value
    return info.value


def entry(chat: int, seq: int, text: str | None, *, ts: int = 0, kind: str = "text", expires: int = 0) -> tuple:
    record = {"id": str(chat * 1000 + seq), "chat": str(chat), "seq": seq, "from": "1", "ts": ts or 1000 + seq,
              "kind": kind}
    if text is not None:
        record["text"] = text
    if expires:
        record["expires_at"] = expires
    return chat, seq, chat * 1000 + seq, orjson.dumps(record), MessageMeta(1, kind, record["ts"], expires)


def opener(tmp_path: Path):
    return open_storage(StorageSection(**storage_section(tmp_path / "data")), tmp_path / "data")


# -- the engines ------------------------------------------------------------------------------


async def test_the_engine_matches_words_and_prefixes_in_ranges_newest_first(tmp_path):
    async with opener(tmp_path) as store:
        batch = WriteBatch()
        for row in (entry(1, 1, "Lunch at the Café Rouge?"), entry(1, 2, "lunch is cancelled"),
                    entry(1, 3, "dinner then", kind="text"), entry(2, 1, "LUNCHBOX forgotten"),
                    entry(2, 2, None, kind="system"), entry(2, 3, "a photo of lunch", kind="image"),
                    entry(3, 1, "lunch in chat three"), entry(1, 4, "lunch edit", kind="edit"),
                    entry(1, 5, "old lunch", expires=500)):
            batch.append_message(*row)
        await store.write(batch)
        everything = [(1, 1, 9), (2, 1, 9)]

        async def found(terms, ranges=everything, **kw):
            return [(c, s) for c, s, _ in await store.search_messages(terms, ranges, 1000, 10, **kw)]

        # not chat 3 (no range), not edits, not expired
        # (ts 1003, 1002, then 1001 twice: the higher chat first; waited for, as everywhere
        # here: LMDB indexes after each commit, not in it)
        await wait_until(lambda: _eq(found(["lunch"]), [(2, 3), (1, 2), (2, 1), (1, 1)]))
        assert await found(["lunch", "rouge"]) == [(1, 1)]  # every word
        assert await found(["caf"]) == [(1, 1)]  # the start of a word
        assert await found(["cancel"]) == [(1, 2)]
        assert await found(["unch"]) == []  # not the middle of one
        assert await found(["lunch"], [(1, 2, 9)]) == [(1, 2)]  # the range of seqs
        assert await found(["lunch"], before=(1002, 1, 2)) == [(2, 1), (1, 1)]  # after a cursor
        assert await found(["lunch"], before=(1001, 2, 1)) == [(1, 1)]
        rows = await store.search_messages(["forgotten"], everything, 1000, 10)
        assert orjson.loads(rows[0][2])["text"] == "LUNCHBOX forgotten"  # the record as stored
        assert await found(["lunch"], []) == []

        # an edit, a deletion (tombstone) and a purge reach the index
        batch = WriteBatch()
        edited = entry(1, 1, "Dinner at the Café Rouge?")
        batch.rewrite_message(1, 1, edited[3], edited[4])
        tombstone = orjson.dumps({"id": "2001", "chat": "2", "seq": 1, "from": "1", "ts": 1001, "kind": "deleted"})
        batch.rewrite_message(2, 1, tombstone, MessageMeta(1, "deleted", 1001, 0))
        batch.delete_message(2, 3, 2003, 0)
        await store.write(batch)
        await wait_until(lambda: _eq(found(["lunch"]), [(1, 2)]))
        assert await found(["dinner"]) == [(1, 3), (1, 1)]


async def _eq(coro, expected) -> bool:
    return (await coro) == expected


@pytest.mark.engine("lmdb")
async def test_the_lmdb_index_is_rebuilt_from_the_log_when_lost_or_not_its_own(tmp_path):
    async with opener(tmp_path) as store:
        batch = WriteBatch()
        for seq in range(1, 2501):  # more than one rebuild chunk
            batch.append_message(*entry(7, seq, f"note number {seq}" + (" needle" if seq % 1000 == 0 else "")))
        await store.write(batch)
        await wait_until(lambda: _count(store, ["needle"], 2))
    index = tmp_path / "data" / "search.sqlite"
    assert index.exists()
    for damage in ("delete", "garbage", "foreign"):
        if damage == "delete":
            for path in tmp_path.joinpath("data").glob("search.sqlite*"):
                path.unlink()
        elif damage == "garbage":
            index.write_bytes(b"this is not a database" * 100)
            for path in tmp_path.joinpath("data").glob("search.sqlite-*"):
                path.unlink()
        else:  # an index made for another environment (say, restored from another node)
            other = tmp_path / "other"
            async with opener(other) as foreign:
                batch = WriteBatch()
                batch.append_message(*entry(7, 1, "needle from elsewhere"))
                await foreign.write(batch)
                await wait_until(lambda: _count(foreign, ["elsewhere"], 1))
            for path in tmp_path.joinpath("data").glob("search.sqlite*"):
                path.unlink()
            for path in other.joinpath("data").glob("search.sqlite*"):
                path.rename(tmp_path / "data" / path.name)
        async with opener(tmp_path) as store:
            await wait_until(lambda: _ready(store))
            assert [s for _, s, _ in await store.search_messages(["needle"], [(7, 1, 9999)], 0, 10)] == [2000, 1000]
            assert await store.search_messages(["elsewhere"], [(7, 1, 9999)], 0, 10) == []


@pytest.mark.engine("lmdb")
async def test_writes_not_indexed_before_a_stop_are_indexed_after_the_start(tmp_path):
    async with opener(tmp_path) as store:
        batch = WriteBatch()
        batch.append_message(*entry(4, 1, "first words"))
        await store.write(batch)
        await wait_until(lambda: _count(store, ["first"], 1))
        store.fts.close()  # the indexer is stopped: nothing more reaches the index
        store._search_ready = False
        batch = WriteBatch()
        batch.append_message(*entry(4, 2, "second words"))
        await store.write(batch)
    async with opener(tmp_path) as store:  # the marks made meanwhile are still there
        await wait_until(lambda: _count(store, ["words"], 2))


async def _count(store, terms, expected) -> bool:
    return len(await store.search_messages(terms, [(c, 1, 1 << 40) for c in range(1, 10)], 0, 100)) == expected


async def _ready(store) -> bool:
    return store.search_ready()


# -- the API ---------------------------------------------------------------------------------


async def searched(client, query, **kw) -> list[tuple[str, str]]:
    return [(r["chat"], r["message"]["text"]) for r in (await client.search(query, **kw))["results"]]


async def test_search_covers_what_the_user_may_read(node, users):
    alice, bob, carol = await users("alice"), await users("bob"), await users("carol")
    direct = await alice.open_direct(username="bob")
    group = await alice.create_group("trip", usernames=["bob"])
    private = await bob.open_direct(username="carol")
    async with alice.connect() as a, bob.connect() as b:
        await a.send_text(direct["id"], "the train leaves at nine")
        await a.send_text(group["id"], "Train tickets are booked")
        await b.send_text(private["id"], "train secret between us")
        await alice.add_members(group["id"], [carol.user["id"]])
        await a.send_text(group["id"], "carol: the train is at nine")
    await wait_until(lambda: _eq(searched(alice, "train"), [
        (group["id"], "carol: the train is at nine"), (group["id"], "Train tickets are booked"),
        (direct["id"], "the train leaves at nine")]))
    assert await searched(carol, "train") == [(group["id"], "carol: the train is at nine"),  # not before she joined
                                              (private["id"], "train secret between us")]
    assert await searched(bob, "train secret") == [(private["id"], "train secret between us")]
    assert await searched(alice, "train", chat=direct["id"]) == [(direct["id"], "the train leaves at nine")]
    assert await searched(alice, "TRAIN Nine") == [(group["id"], "carol: the train is at nine"),
                                                  (direct["id"], "the train leaves at nine")]
    await expect_error("not_member", alice.search("train", chat=private["id"]))
    for bad in ("", "   ", "!!!", "x" * 201):
        await expect_error("bad_request", alice.search(bad))
    await expect_error("bad_request", alice.search("train", before="nope"))

    # pages
    first = await alice.search("train", limit=2)
    assert len(first["results"]) == 2 and first["next"] and first["complete"] is True
    rest = await alice.search("train", limit=2, before=first["next"])
    assert [r["message"]["text"] for r in rest["results"]] == ["the train leaves at nine"] and rest["next"] is None

    # leaving: what was seen stays searchable, nothing after
    await carol.leave(group["id"])
    async with alice.connect() as a:
        await a.send_text(group["id"], "train update after carol left")
    await wait_until(lambda: _eq(searched(alice, "update"), [(group["id"], "train update after carol left")]))
    assert await searched(carol, "train", chat=group["id"]) == [(group["id"], "carol: the train is at nine")]


async def test_edits_deletions_clearing_and_deleting_for_me_are_respected(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with alice.connect() as a:
        typo = await a.send_text(chat["id"], "meet at the statoin")
        gone = await a.send_text(chat["id"], "meet at my place instead")
        mine = await a.send_text(chat["id"], "meet me later")
        await a.edit(chat["id"], typo["id"], "meet at the station")
        await a.delete(chat["id"], gone["id"])
    await wait_until(lambda: _eq(searched(bob, "meet"), [(chat["id"], "meet me later"),
                                                         (chat["id"], "meet at the station")]))
    assert await searched(bob, "statoin") == [] and await searched(bob, "place") == []
    await bob.delete_for_me(chat["id"], [mine["seq"]])
    assert await searched(bob, "meet") == [(chat["id"], "meet at the station")]
    assert len(await searched(alice, "meet")) == 2
    await bob.clear_history(chat["id"])
    assert await searched(bob, "meet") == []
    assert len(await searched(alice, "meet")) == 2


async def test_expired_messages_are_not_found(tmp_path):
    async with running_node(make_config(tmp_path, storage={"sweep_interval": 0.1})) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a:
            await a.send_text(chat["id"], "secret code 1234", ttl=1)
            await a.send_text(chat["id"], "public code 5678")
        await wait_until(lambda: _eq(searched(bob, "code"), [(chat["id"], "public code 5678")]))
        for client in (alice, bob):
            await client.aclose()


async def test_history_around_a_message(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with alice.connect() as a:
        for i in range(1, 31):
            await a.send_text(chat["id"], f"message {i}")
    page = await bob.history_around(chat["id"], 15, limit=10)
    assert [m["seq"] for m in page["messages"]] == list(range(10, 20))
    assert page["has_more"] and page["has_newer"] and page["next_before"] == 10
    start = await bob.history_around(chat["id"], 2, limit=10)
    assert [m["seq"] for m in start["messages"]] == list(range(1, 11)) and not start["has_more"]
    end = await bob.history_around(chat["id"], 30, limit=10)
    assert [m["seq"] for m in end["messages"]] == list(range(25, 31)) and not end["has_newer"]
    for seq in (15, 30, 1):  # a page of one: the message itself (no half before it)
        one = await bob.history_around(chat["id"], seq, limit=1)
        assert [m["seq"] for m in one["messages"]] == [seq] and one["next_before"] == seq
        assert (one["has_more"], one["has_newer"]) == (seq > 1, seq < 30)
    two = await bob.history_around(chat["id"], 2, limit=2)
    assert [m["seq"] for m in two["messages"]] == [1, 2] and not two["has_more"] and two["has_newer"]
    await expect_error("not_member", (await users("mallory")).history_around(chat["id"], 3))
    # `around` and `before` are two kinds of page: asking for both is refused
    await expect_error("bad_request", bob.request("GET", f"/api/chats/{chat['id']}/messages", around=15, before=20))
    await bob.clear_history(chat["id"])  # nothing is left to show around anything
    for seq in (15, 30):
        assert await bob.history_around(chat["id"], seq) == {"messages": [], "has_more": False, "has_newer": False,
                                                             "next_before": None}


@pytest.mark.engine("postgresql")
async def test_a_version_1_postgresql_database_gains_search_over_what_it_holds(pg_dsn):
    import psycopg

    from node.storage.pg_schema import MIGRATIONS
    from node.storage.postgres import open_postgres

    def make_v1() -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE schema_version (version integer PRIMARY KEY,"
                         " applied_at timestamptz NOT NULL DEFAULT now())")
            for statement in MIGRATIONS[1]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (1)")
            _chat, _seq, message_id, raw, meta = entry(5, 1, "written before search existed")
            conn.execute("INSERT INTO messages (chat_id, seq, id, sender, kind, ts, record)"
                         " VALUES (5, 1, %s, 1, 'text', %s, %s::json)", (message_id, meta.ts, raw.decode()))

    await trio.to_thread.run_sync(make_v1)
    async with open_postgres(pg_dsn) as store:
        assert store.info.schema_version == 2
        rows = await store.search_messages(["existed"], [(5, 1, 10)], 0, 10)
        assert [(c, s) for c, s, _ in rows] == [(5, 1)]
