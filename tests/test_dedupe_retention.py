"""Idempotency records are kept for `storage.dedupe_retention`, then purged; old data dirs migrate."""

from __future__ import annotations

import attrs
import lmdb
import pytest
from conftest import PASSWORD, make_config, new_user, running_node

from node.client import ChatClient
from node.config import ConfigError, structure_config
from node.core import dedupe
from node.core.chats import Awaitable, now_ms
from node.storage import lmdb_engine
from node.storage.keys import u64
from node.storage.lmdb_engine import DEDUPE_BACKFILL, SCHEMA_VERSION, open_lmdb
from node.testing import wait_until

DAY_MS = 86_400_000


async def dedupe_rows(storage) -> list[tuple[int, str, int]]:
    """(user id, client_msg_id, ts) of every stored dedupe record."""
    return [(user, cid, ack.ts) async for page in storage.export("dedupe") for user, cid, ack in page]


async def due_rows(storage) -> list[tuple[int, str, int]]:
    """What the engine's time order offers the sweeper, everything due or not."""
    return await storage.due_dedupe(now_ms() + 365 * DAY_MS, 1000)


async def test_retry_within_the_window_returns_the_original_ack_and_stores_nothing(tmp_path):
    config = make_config(tmp_path, storage={"sweep_interval": 0.1})  # default retention: 7 days
    async with running_node(config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a:
            first = await a.send_text(chat["id"], "once", client_msg_id="keep-1")
            stored = await dedupe_rows(node.storage)
            assert stored == [(int(alice.user["id"]), "keep-1", first["ts"])]
            assert await due_rows(node.storage) == stored
            retention_ms = int(node.config.storage.dedupe_retention * 1000)
            for _ in range(3):  # sweeps: none may touch a record inside the window
                assert await dedupe.sweep_dedupe_once(node, retention_ms) is False
            again = await a.send_text(chat["id"], "once", client_msg_id="keep-1")
        assert again["duplicate"] is True
        assert (again["id"], again["seq"], again["ts"]) == (first["id"], first["seq"], first["ts"])
        assert await dedupe_rows(node.storage) == stored
        assert [m["text"] for m in await bob.history(chat["id"])] == ["once"]
        assert node.chats.dedupe_purged == 0
        await alice.aclose(), await bob.aclose()


async def test_records_past_the_window_are_purged_and_the_message_stays(tmp_path):
    config = make_config(tmp_path, storage={"sweep_interval": 0.1, "dedupe_retention": 1.0})
    async with running_node(config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a:
            first = await a.send_text(chat["id"], "old enough", client_msg_id="gone-1")
            log_before = await node.storage.read_messages(int(chat["id"]), first["seq"], first["seq"] + 1, 1)
            assert [cid for _, cid, _ in await due_rows(node.storage)] == ["gone-1"]

            async def purged() -> bool:
                return not await dedupe_rows(node.storage)

            await wait_until(purged)
            assert await due_rows(node.storage) == []
            assert await node.storage.read_messages(int(chat["id"]), first["seq"], first["seq"] + 1, 1) == log_before
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

    user_id: int = 0
    client_msg_id: str = ""

    def reads(self, reads):
        reads.dedupe.add((self.user_id, self.client_msg_id))

    def apply(self, chats, batch, now):
        found = chats.find_duplicate(self.user_id, self.client_msg_id)
        return lambda: self.resolve(found)


async def test_a_send_in_the_same_batch_as_the_purge_sees_the_record_gone(tmp_path):
    config = make_config(tmp_path, storage={"sweep_interval": 3600.0})  # no sweep of its own
    async with running_node(config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a:
            sent = await a.send_text(chat["id"], "hi", client_msg_id="same-batch")
        key = (int(alice.user["id"]), "same-batch")
        before, purge, after = _Probe(*key), dedupe.PurgeDedupe(entries=[(*key, sent["ts"])]), _Probe(*key)
        for op in (before, purge, after):  # submit does not yield while there is room: one batch
            await node.chats.submit(op)
        assert (await before.wait())["seq"] == sent["seq"]
        assert await purge.wait() == 1
        assert await after.wait() is None
        assert await dedupe_rows(node.storage) == [] and await due_rows(node.storage) == []
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
            key = u64(int(user["id"])) + cid.encode()
            value = txn.get(key, db=records)
            txn.put(key, value[:24] + u64(now_ms() - 2 * DAY_MS), db=records)
    env.close()
    return {"user": user, "chat": chat, "acks": acks}


@pytest.mark.engine("lmdb")  # an LMDB data dir from before schema 2
async def test_a_version_1_data_dir_opens_and_its_records_are_indexed_or_purged(tmp_path, monkeypatch):
    config = make_config(tmp_path, storage={"sweep_interval": 0.1, "dedupe_retention": 86_400.0})
    made = await _make_version_1_data_dir(tmp_path, config)
    chat, acks = made["chat"], made["acks"]

    async with open_lmdb(config.data_dir / "db") as storage:  # the migration itself: a marker only
        assert storage.info.schema_version == SCHEMA_VERSION
        assert await storage.get_meta(DEDUPE_BACKFILL) == b"\x00"
        assert await due_rows(storage) == [] and len(await dedupe_rows(storage)) == 5

    monkeypatch.setattr(lmdb_engine, "BACKFILL_CHUNK", 2)  # five records: three chunks, resumed from the marker
    async with running_node(config) as node:

        async def backfilled() -> bool:
            return await node.storage.get_meta(DEDUPE_BACKFILL) is None

        await wait_until(backfilled)
        fresh = sorted(["fresh-1", "fresh-2"])
        assert sorted(cid for _, cid, _ in await dedupe_rows(node.storage)) == fresh
        assert sorted((cid, ts) for _, cid, ts in await due_rows(node.storage)) == sorted(
            (cid, acks[cid]["ts"]) for cid in fresh)
        assert node.storage.backfill_purged == 3
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
