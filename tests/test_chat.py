"""1-1 chat over the real WebSocket protocol: both ways, offline delivery, retries."""

from __future__ import annotations

import trio

from node.client import ChatClient


async def test_two_users_chat_both_ways(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    assert (await bob.open_direct(username="alice"))["id"] == chat["id"]  # get, not create
    async with alice.connect() as a, bob.connect() as b:
        await a.synced.wait()
        await b.synced.wait()
        ack = await a.send_text(chat["id"], "hi bob")
        assert ack["seq"] == 1 and ack["id"].isdigit() and ack["status"] == "sent"
        got = await b.wait_for("message")
        assert (got["text"], got["from"], got["seq"], got["id"]) == ("hi bob", alice.user["id"], 1, ack["id"])
        delivered = await a.wait_for("delivered")
        assert delivered == {"type": "delivered", "chat": chat["id"], "user": bob.user["id"], "seq": 1}
        ack2 = await b.send_text(chat["id"], "hi alice")
        assert ack2["seq"] == 2
        got2 = await a.wait_for("message")
        assert (got2["text"], got2["from"]) == ("hi alice", bob.user["id"])
    history = await alice.history(chat["id"])
    assert [m["text"] for m in history] == ["hi bob", "hi alice"]
    assert history[0]["status"] == "read"  # bob replied, which reads everything before
