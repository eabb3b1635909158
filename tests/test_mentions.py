"""Mentions in groups: the ids a message names, checked against the members, stored with
the message, and a push through a mute."""

from __future__ import annotations

import orjson
import pytest
from test_push import push_config, receiver

from node.client import ClientError
from node.testing import new_user, running_node


async def expect_error(code: str, coro) -> ClientError:
    with pytest.raises(ClientError) as info:
        await coro
    assert info.value.code == code, info.value
    return info.value


async def test_mentions_are_stored_and_must_name_members_of_the_group(node, users):
    alice, bob, carol, mallory = [await users(n) for n in ("alice", "bob", "carol", "mallory")]
    group = await alice.create_group("team", usernames=["bob", "carol"])
    direct = await alice.open_direct(username="bob")
    async with alice.connect() as a, bob.connect() as b:
        await b.synced.wait()
        ack = await a.send_text(group["id"], "@Bob and @Carol: standup?",
                                mentions=[bob.user["id"], carol.user["id"], bob.user["id"]])
        got = await b.wait_for("message", seq=ack["seq"])
        assert got["mentions"] == [bob.user["id"], carol.user["id"]]  # each once, in order
        await a.send_text(group["id"], "no one in particular", mentions=[])
        again = await a.send_text(group["id"], "@Bob look", mentions=[bob.user["id"]])
        assert again["seq"] > ack["seq"]
        for bad in ([mallory.user["id"]], ["not an id"], "bob", [True], [alice.user["id"], 12]):
            await expect_error("bad_request", a.send_text(group["id"], "hey", mentions=bad))
        await expect_error("bad_request", a.send_text(direct["id"], "@Bob", mentions=[bob.user["id"]]))  # groups only
        await expect_error("bad_request", a.send_text(group["id"], "x", kind="edit", target=ack["id"],
                                                       mentions=[bob.user["id"]]))
        await bob.leave(group["id"])
        await expect_error("bad_request", a.send_text(group["id"], "@Bob?", mentions=[bob.user["id"]]))  # left
    history = await carol.history(group["id"])
    assert [m.get("mentions") for m in history if m["kind"] == "text"] == [
        [bob.user["id"], carol.user["id"]], None, [bob.user["id"]]]


async def test_a_mention_gets_through_a_mute(tmp_path):
    async with receiver() as hook, running_node(push_config(tmp_path)) as node:
        alice, bob, carol = [await new_user(node, n) for n in ("alice", "bob", "carol")]
        group = await alice.create_group("noisy", usernames=["bob", "carol"])
        for user in (bob, carol):
            await user.register_push_target("webhook", f"{hook.url}/{user.user['username']}")
            await user.set_prefs(group["id"], mute=True)
        async with alice.connect() as a:
            await a.send_text(group["id"], "lunch anyone?")  # muted: nobody is pushed
            ack = await a.send_text(group["id"], "@Bob your keys?", mentions=[bob.user["id"]])
        request = await hook.next()
        assert request["path"] == "/bob" and orjson.loads(request["body"])["seq"] == ack["seq"]
        assert hook.received_nowait() == []  # carol's mute holds
        for client in (alice, bob, carol):
            await client.aclose()
