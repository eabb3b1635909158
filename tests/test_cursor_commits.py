"""Delivery cursors ride on the next commit instead of a commit of their own.

A `received` moves the device's `delivered` cursor at once (the sender hears `delivered`
right away) and is stored with whatever commits next, or on its own within CURSOR_LINGER
when nothing does; a graceful stop stores it too. Sends are never deferred: an ack still
follows its own durable commit.
"""

from __future__ import annotations

import trio
from conftest import make_config, new_user, running_node

from node.core import chats as chats_module


def commits(node) -> int:
    return node.storage.statistics()["commits"]


async def settle(node) -> int:
    """Wait until no commit comes for a while (the search indexer, plugin flushes)."""
    last = commits(node)
    while True:
        await trio.sleep(0.4)
        now = commits(node)
        if now == last:
            return now
        last = now


async def stored_delivered(node, chat_id: str, user_id: str) -> int:
    stored = await node.storage.load_chats([int(chat_id)])
    return stored[int(chat_id)].members[int(user_id)]["delivered"]


async def test_a_received_commits_nothing_of_its_own_and_rides_on_the_next_send(tmp_path, monkeypatch):
    monkeypatch.setattr(chats_module, "CURSOR_LINGER", 30.0)  # only the next send may carry it
    async with running_node(make_config(tmp_path)) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a, bob.connect(auto_ack=False) as b:
            await b.synced.wait()
            first = await a.send_text(chat["id"], "one")
            await b.wait_for("message", text="one")
            before = await settle(node)
            await b.send_events({"type": "received", "chat": chat["id"], "seq": first["seq"]})
            delivered = await a.wait_for("delivered")  # told at once, before any commit
            assert delivered["seq"] == first["seq"]
            assert commits(node) == before
            assert await stored_delivered(node, chat["id"], bob.user["id"]) < first["seq"]
            await a.send_text(chat["id"], "two")  # acked after its commit, which carried the cursor
            assert await stored_delivered(node, chat["id"], bob.user["id"]) == first["seq"]
        await alice.aclose()
        await bob.aclose()


async def test_a_cursor_nothing_carries_is_stored_within_the_linger(tmp_path, monkeypatch):
    monkeypatch.setattr(chats_module, "CURSOR_LINGER", 0.2)
    async with running_node(make_config(tmp_path)) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a, bob.connect(auto_ack=False) as b:
            await b.synced.wait()
            sent = await a.send_text(chat["id"], "one")
            await b.wait_for("message", text="one")
            await b.send_events({"type": "received", "chat": chat["id"], "seq": sent["seq"]})
            await a.wait_for("delivered")
            with trio.fail_after(5):
                while await stored_delivered(node, chat["id"], bob.user["id"]) < sent["seq"]:
                    await trio.sleep(0.02)
        await alice.aclose()
        await bob.aclose()


async def test_a_graceful_stop_stores_the_cursors_still_waiting(tmp_path, monkeypatch):
    monkeypatch.setattr(chats_module, "CURSOR_LINGER", 30.0)
    async with running_node(make_config(tmp_path)) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a, bob.connect(auto_ack=False) as b:
            await b.synced.wait()
            sent = await a.send_text(chat["id"], "one")
            await b.wait_for("message", text="one")
            await b.send_events({"type": "received", "chat": chat["id"], "seq": sent["seq"]})
            await a.wait_for("delivered")
        await alice.aclose()
        await bob.aclose()
    async with running_node(make_config(tmp_path)) as node:
        assert await stored_delivered(node, chat["id"], bob.user["id"]) == sent["seq"]
