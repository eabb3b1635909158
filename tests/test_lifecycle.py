"""Edit, delete for everyone, replies and disappearing messages."""

from __future__ import annotations

import orjson
import pytest
from conftest import make_config, new_user, running_node

from node.client import ClientError
from node.core.chats import now_ms
from node.testing import wait_until


async def raw_log(node, chat_id: str, seq: int) -> bytes | None:
    rows = await node.storage.read_messages(int(chat_id), seq, seq + 1, 1)
    return rows[0][1] if rows else None


async def test_edit_reaches_every_device_live_and_on_resync(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with alice.connect() as a, bob.connect() as b:
        await b.synced.wait()
        original = await a.send_text(chat["id"], "helo")
        edit_ack = await a.edit(chat["id"], original["id"], "hello")
        assert edit_ack["seq"] == original["seq"] + 1
        edit = await b.wait_for("message", kind="edit")
        assert (edit["target"], edit["target_seq"], edit["text"]) == (original["id"], original["seq"], "hello")
    history = await bob.history(chat["id"])
    assert history[0]["text"] == "hello" and history[0]["edited"] >= original["ts"]
    assert history[1]["kind"] == "edit"
    bob.cursors.clear()
    async with bob.connect() as b:  # a new device replays the message (already edited) and the edit
        await b.synced.wait()
        assert [e["kind"] for e in b.events_nowait() if e["type"] == "message"] == ["text", "edit"]


async def test_only_the_sender_edits_and_only_within_the_window(tmp_path):
    async with running_node(make_config(tmp_path, limits={"edit_window": 0.5})) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a, bob.connect() as b:
            sent = await a.send_text(chat["id"], "mine")
            with pytest.raises(ClientError) as info:
                await b.edit(chat["id"], sent["id"], "yours now")
            assert info.value.code == "forbidden"
            await wait_until(lambda: now_ms() > sent["ts"] + 500)  # the edit window has passed
            with pytest.raises(ClientError) as info:
                await a.edit(chat["id"], sent["id"], "too late")
            assert info.value.code == "edit_window_passed"
            with pytest.raises(ClientError) as info:
                await a.edit(chat["id"], "123456789", "nothing there")
            assert info.value.code == "not_found"
        assert [m["text"] for m in await bob.history(chat["id"])] == ["mine"]
        await alice.aclose(), await bob.aclose()


async def test_delete_for_everyone_removes_the_content_from_storage(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with alice.connect() as a, bob.connect() as b:
        await b.synced.wait()
        secret = await a.send_text(chat["id"], "my secret pin 1234")
        await b.wait_for("message", text="my secret pin 1234")
        with pytest.raises(ClientError) as info:
            await b.delete(chat["id"], secret["id"])
        assert info.value.code == "forbidden"
        await a.delete(chat["id"], secret["id"])
        gone = await b.wait_for("message", kind="delete")
        assert gone["target"] == secret["id"]
    stored = await raw_log(node, chat["id"], secret["seq"])
    assert b"secret pin" not in stored and orjson.loads(stored)["kind"] == "deleted"
    history = await bob.history(chat["id"])
    assert history[0]["kind"] == "deleted" and "text" not in history[0]
    assert (await bob.chats())[0]["unread"] == 0


async def test_group_admin_may_delete_others_messages(node, users):
    alice, bob, carol = await users("alice"), await users("bob"), await users("carol")
    group = await alice.create_group("g", members=[bob.user["id"], carol.user["id"]])
    async with bob.connect() as b, carol.connect() as c, alice.connect() as a:
        spam = await b.send_text(group["id"], "spam")
        with pytest.raises(ClientError) as info:
            await c.delete(group["id"], spam["id"])
        assert info.value.code == "forbidden"
        await a.delete(group["id"], spam["id"])
    assert (await carol.history(group["id"]))[1]["deleted_by"] == alice.user["id"]


async def test_replies_reference_a_message_of_the_same_chat(node, users):
    alice, bob, _carol = await users("alice"), await users("bob"), await users("carol")
    chat = await alice.open_direct(username="bob")
    other = await alice.open_direct(username="carol")
    async with alice.connect() as a, bob.connect() as b:
        question = await a.send_text(chat["id"], "lunch?")
        answer = await b.send_text(chat["id"], "yes", reply_to=question["id"])
        elsewhere = await a.send_text(other["id"], "hi carol")
        with pytest.raises(ClientError) as info:
            await b.send_text(chat["id"], "??", reply_to=elsewhere["id"])
        assert info.value.code == "not_found"
    reply = (await alice.history(chat["id"]))[-1]
    assert (reply["reply_to"], reply["reply_to_seq"], reply["seq"]) == (question["id"], question["seq"], answer["seq"])


async def test_disappearing_messages_expire_and_are_purged(tmp_path):
    config = make_config(tmp_path, storage={"sweep_interval": 0.1})
    async with running_node(config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        updated = await alice.update_chat(chat["id"], ttl=1)
        assert updated["ttl"] == 1
        async with alice.connect() as a:
            short = await a.send_text(chat["id"], "gone soon")
            kept = await a.send_text(chat["id"], "also gone soon, but later", ttl=30)
            await a.edit(chat["id"], short["id"], "gone soon (edited)")
        history = await bob.history(chat["id"])
        assert history[0]["event"] == "ttl_changed" and history[1]["expires_at"] - history[1]["ts"] == 1000

        async def purged() -> bool:  # once due (a second), within a sweep interval
            return await raw_log(node, chat["id"], short["seq"]) is None

        await wait_until(purged, 10, interval=0.05)
        history = await bob.history(chat["id"])
        assert [m.get("text") for m in history] == [None, "also gone soon, but later"]  # the system message stays
        assert await raw_log(node, chat["id"], short["seq"] + 2) is None  # the edit is purged with it
        assert await raw_log(node, chat["id"], kept["seq"]) is not None
        async with bob.connect() as b:  # never served again, also not by replay
            await b.synced.wait()
            assert [e.get("text") for e in b.events_nowait() if e["type"] == "message"] == [None, "also gone soon, but later"]
            async with alice.connect() as a:  # seqs continue; the purged ones are not reused
                assert (await a.send_text(chat["id"], "next"))["seq"] == short["seq"] + 3
        await alice.aclose(), await bob.aclose()
    async with running_node(config) as node:  # even after a restart with the newest entries purged
        assert (await node.chats.load(int(chat["id"]))).committed_seq == short["seq"] + 3


async def test_bad_ttl_values(node, users):
    alice, _bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    for bad in (-1, "1", 1.5, 400 * 24 * 3600):
        with pytest.raises(ClientError) as info:
            await alice.update_chat(chat["id"], ttl=bad)
        assert info.value.code == "bad_request"
    async with alice.connect() as a:
        with pytest.raises(ClientError) as info:
            await a.send_text(chat["id"], "x", ttl=-5)
        assert info.value.code == "bad_request"


async def test_an_expired_message_is_gone_before_it_is_purged(tmp_path):
    """Between its expiry and the sweep that purges it, a disappearing message is gone for
    everything: no edit, deletion or reply names it (a deletion would have brought it
    back as a tombstone), and history pages go on past it. What remains of a disappearing
    message deleted for everyone disappears with it."""
    config = make_config(tmp_path, storage={"sweep_interval": 3600})  # no purge during the test
    async with running_node(config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a:
            before = await a.send_text(chat["id"], "before")
            short = await a.send_text(chat["id"], "gone soon", ttl=1)
            after = await a.send_text(chat["id"], "after")
            await wait_until(lambda: now_ms() > short["ts"] + 1000)
            assert await raw_log(node, chat["id"], short["seq"]) is not None  # expired, not purged
            for attempt in (a.edit(chat["id"], short["id"], "changed"), a.delete(chat["id"], short["id"]),
                            a.send_text(chat["id"], "what?", reply_to=short["id"])):
                with pytest.raises(ClientError) as info:
                    await attempt
                assert info.value.code == "not_found"

            page = await bob.request("GET", f"/api/chats/{chat['id']}/messages", limit=2)
            assert [m["seq"] for m in page["messages"]] == [after["seq"]]  # a short page ...
            assert page["has_more"] and page["next_before"] == short["seq"]  # ... that says where to go on
            page = await bob.request("GET", f"/api/chats/{chat['id']}/messages", limit=2, before=page["next_before"])
            assert [m["seq"] for m in page["messages"]] == [before["seq"]] and not page["has_more"]
            assert [m["text"] for m in await bob.whole_history(chat["id"], page=2)] == ["before", "after"]

            await bob.clear_history(chat["id"])
            async with bob.connect() as b:  # nor does anyone act on what they cleared
                with pytest.raises(ClientError) as info:
                    await b.send_text(chat["id"], "what?", reply_to=after["id"])
                assert info.value.code == "not_found"

            kept = await a.send_text(chat["id"], "disappears later", ttl=3600)
            deletion = await a.delete(chat["id"], kept["id"])
        expires = kept["ts"] + 3600 * 1000
        assert orjson.loads(await raw_log(node, chat["id"], kept["seq"]))["expires_at"] == expires  # the tombstone
        assert orjson.loads(await raw_log(node, chat["id"], deletion["seq"]))["expires_at"] == expires
        await alice.aclose(), await bob.aclose()
