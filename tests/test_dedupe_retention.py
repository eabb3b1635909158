"""Idempotency records are kept for `storage.dedupe_retention`, then purged; old data dirs migrate."""

from __future__ import annotations

import attrs
import lmdb
import pytest
import trio
from conftest import PASSWORD, make_config, new_user, running_node

from node.client import ChatClient
from node.config import ConfigError, structure_config
from node.core import dedupe
from node.core.chats import Awaitable, now_ms
from node.storage import DEDUPE_BACKFILL, SCHEMA_VERSION, open_storage
from node.storage.keys import from_u64, pair, u64

DAY_MS = 86_400_000


def rows(storage, db: str) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a named database, through the storage API."""
    with storage.read() as txn:
        return [(bytes(k), bytes(v)) for k, v in storage.scan(txn, db, b"\x00", b"\xff")]


def dedupe_key(user: dict, client_msg_id: str) -> bytes:
    return u64(int(user["id"])) + client_msg_id.encode()


def indexed_keys(storage) -> list[bytes]:
    """The dedupe keys named by `dedupe_by_time` (its keys are ts | dedupe key)."""
    return [key[8:] for key, _ in rows(storage, "dedupe_by_time")]


async def wait_until(predicate, timeout: float = 15.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


async def test_retry_within_the_window_returns_the_original_ack_and_stores_nothing(tmp_path):
    config = make_config(tmp_path, storage={"sweep_interval": 0.1})  # default retention: 7 days
    async with running_node(config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a:
            first = await a.send_text(chat["id"], "once", client_msg_id="keep-1")
            stored = rows(node.storage, "dedupe"), rows(node.storage, "dedupe_by_time")
            assert [k for k, _ in stored[0]] == [dedupe_key(alice.user, "keep-1")]
            assert [k for k, _ in stored[1]] == [u64(first["ts"]) + dedupe_key(alice.user, "keep-1")]
            await trio.sleep(0.5)  # several sweeps: none may touch a record inside the window
            again = await a.send_text(chat["id"], "once", client_msg_id="keep-1")
        assert again["duplicate"] is True
        assert (again["id"], again["seq"], again["ts"]) == (first["id"], first["seq"], first["ts"])
        assert (rows(node.storage, "dedupe"), rows(node.storage, "dedupe_by_time")) == stored
        assert [m["text"] for m in await bob.history(chat["id"])] == ["once"]
        assert node.storage.get("meta", DEDUPE_BACKFILL) is None  # a new data dir has nothing to backfill
        assert node.chats.dedupe_purged == 0
        await alice.aclose(), await bob.aclose()


async def test_records_past_the_window_are_purged_and_the_message_stays(tmp_path):
    config = make_config(tmp_path, storage={"sweep_interval": 0.1, "dedupe_retention": 1.0})
    async with running_node(config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a:
            first = await a.send_text(chat["id"], "old enough", client_msg_id="gone-1")
            log_before = node.storage.get("log", pair(int(chat["id"]), first["seq"]))
            assert indexed_keys(node.storage) == [dedupe_key(alice.user, "gone-1")]
            await wait_until(lambda: not rows(node.storage, "dedupe"))
            assert rows(node.storage, "dedupe_by_time") == []
            assert node.storage.get("log", pair(int(chat["id"]), first["seq"])) == log_before
            history = await bob.history(chat["id"])
            assert [(m["id"], m["text"]) for m in history] == [(first["id"], "old enough")]
            stats = await alice.request("GET", "/api/admin/stats")
            assert stats["chats"]["dedupe_purged"] == 1
            metrics = await alice._http.get("/metrics")
            assert "chatnode_chats_dedupe_purged 1.0" in metrics.text
            # Past the window the id is new again: the documented consequence of forgetting it.
            late = await a.send_text(chat["id"], "old enough", client_msg_id="gone-1")
            assert not late.get("duplicate") and late["seq"] == first["seq"] + 1
        await alice.aclose(), await bob.aclose()


@attrs.define(eq=False)
class _Probe(Awaitable):
    """Reports what a send applied at this point of the batch would find for `key`."""

    key: bytes = b""

    def apply(self, chats, batch, now):
        found = chats.find_duplicate(self.key)
        return lambda: self.resolve(found)


async def test_a_send_in_the_same_batch_as_the_purge_sees_the_record_gone(tmp_path):
    config = make_config(tmp_path, storage={"sweep_interval": 3600.0})  # no sweep of its own
    async with running_node(config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a:
            sent = await a.send_text(chat["id"], "hi", client_msg_id="same-batch")
        key = dedupe_key(alice.user, "same-batch")
        before, purge, after = _Probe(key=key), dedupe.PurgeDedupe(entries=[(sent["ts"], key)]), _Probe(key=key)
        for op in (before, purge, after):  # submit does not yield while there is room: one batch
            await node.chats.submit(op)
        assert (await before.wait())["seq"] == sent["seq"]
        assert await purge.wait() == 1
        assert await after.wait() is None
        assert rows(node.storage, "dedupe") == [] and rows(node.storage, "dedupe_by_time") == []
        await alice.aclose(), await bob.aclose()


async def _make_version_1_data_dir(tmp_path, config) -> dict:
    """Run a node, then turn its data dir back into what schema version 1 left behind."""
    async with running_node(config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a:
            acks = {cid: await a.send_text(chat["id"], cid, client_msg_id=cid)
                    for cid in ["old-1", "old-2", "old-3", "fresh-1", "fresh-2"]}
        user = alice.user
        await alice.aclose(), await bob.aclose()
    env = lmdb.open(str(config.data_dir / "db"), max_dbs=64)
    with env.begin(write=True) as txn:
        meta, records = env.open_db(b"meta", txn=txn), env.open_db(b"dedupe", txn=txn)
        txn.drop(env.open_db(b"dedupe_by_time", txn=txn), delete=True)  # version 1 had no index
        txn.put(b"schema_version", b"1", db=meta)
        for cid in ["old-1", "old-2", "old-3"]:  # sent two days ago
            value = txn.get(dedupe_key(user, cid), db=records)
            txn.put(dedupe_key(user, cid), value[:24] + u64(now_ms() - 2 * DAY_MS), db=records)
    env.close()
    return {"user": user, "chat": chat, "acks": acks}


async def test_a_version_1_data_dir_opens_and_its_records_are_indexed_or_purged(tmp_path, monkeypatch):
    config = make_config(tmp_path, storage={"sweep_interval": 0.1, "dedupe_retention": 86_400.0})
    made = await _make_version_1_data_dir(tmp_path, config)
    user, chat, acks = made["user"], made["chat"], made["acks"]

    async with open_storage(config.data_dir / "db") as storage:  # the migration itself: a marker only
        assert storage.get("meta", b"schema_version") == str(SCHEMA_VERSION).encode()
        assert storage.get("meta", DEDUPE_BACKFILL) == b"\x00"
        assert rows(storage, "dedupe_by_time") == [] and len(rows(storage, "dedupe")) == 5

    monkeypatch.setattr(dedupe, "CHUNK", 2)  # five records: three chunks, resumed from the marker
    async with running_node(config) as node:
        await wait_until(lambda: node.storage.get("meta", DEDUPE_BACKFILL) is None)
        fresh = sorted(dedupe_key(user, cid) for cid in ["fresh-1", "fresh-2"])
        assert sorted(k for k, _ in rows(node.storage, "dedupe")) == fresh
        assert sorted(indexed_keys(node.storage)) == fresh
        assert sorted(from_u64(k[:8]) for k, _ in rows(node.storage, "dedupe_by_time")) == sorted(
            acks[cid]["ts"] for cid in ["fresh-1", "fresh-2"])
        assert node.chats.dedupe_purged == 3
        alice = await new_user_login(node, "alice")
        async with alice.connect() as a:
            again = await a.send_text(chat["id"], "fresh-1", client_msg_id="fresh-1")
            assert again["duplicate"] is True and again["id"] == acks["fresh-1"]["id"]
        history = await alice.history(chat["id"])
        assert [m["text"] for m in history] == ["old-1", "old-2", "old-3", "fresh-1", "fresh-2"]
        await alice.aclose()


async def new_user_login(node, name: str) -> ChatClient:
    """Log in an existing user of the test data dir."""
    client = ChatClient(node.http_url)
    await client.login(name, PASSWORD)
    return client


def test_retention_out_of_range_stops_startup_with_one_line():
    with pytest.raises(ConfigError) as info:
        structure_config({"storage": {"dedupe_retention": 0.5}})
    assert str(info.value) == "storage.dedupe_retention: must be between 1.0 and 315360000.0, got 0.5"
    assert structure_config({}).storage.dedupe_retention == 7 * 86_400
