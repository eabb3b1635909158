"""Reactions: one emoji per user per message, changed or taken back; sent as events, never
as log entries; in history and after a reconnect; gone with the message."""

from __future__ import annotations

import orjson
import pytest
from test_push import push_config, receiver

from node.client import ClientError
from node.testing import make_config, new_user, running_node, wait_until


async def expect_error(code: str, coro) -> ClientError:
    with pytest.raises(ClientError) as info:
        await coro
    assert info.value.code == code, info.value
    return info.value


async def test_react_change_and_take_back_with_events_and_no_log_entry(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with alice.connect() as a, bob.connect() as b:
        await b.synced.wait()
        ack = await a.send_text(chat["id"], "dinner at eight?")
        await b.wait_for("message")
        await bob.mark_read(chat["id"], ack["seq"])
        before = await alice.chat(chat["id"])

        event = await bob.react(chat["id"], ack["seq"], "👍")
        assert {k: event[k] for k in ("type", "chat", "seq", "message", "user", "emoji")} == {
            "type": "reaction", "chat": chat["id"], "seq": ack["seq"], "message": ack["id"],
            "user": bob.user["id"], "emoji": "👍"}
        assert (await a.wait_for("reaction"))["emoji"] == "👍"  # the author is told
        assert (await b.wait_for("reaction"))["user"] == bob.user["id"]  # and the reactor's devices

        await bob.react(chat["id"], ack["seq"], "❤️")  # one per user: it replaces the first
        assert (await a.wait_for("reaction"))["emoji"] == "❤️"
        await alice.react(chat["id"], ack["seq"], "❤️")
        await a.wait_for("reaction", user=alice.user["id"])
        history = await bob.history(chat["id"])
        assert history[-1]["reactions"] == [{"emoji": "❤️", "users": [bob.user["id"], alice.user["id"]]}]

        taken = await bob.unreact(chat["id"], ack["seq"])
        assert taken["emoji"] is None
        assert (await a.wait_for("reaction", user=bob.user["id"]))["emoji"] is None
        assert (await bob.history(chat["id"]))[-1]["reactions"] == [{"emoji": "❤️", "users": [alice.user["id"]]}]
        await alice.unreact(chat["id"], ack["seq"])
        await alice.unreact(chat["id"], ack["seq"])  # taking back nothing is fine
        assert "reactions" not in (await bob.history(chat["id"]))[-1]

    after = await alice.chat(chat["id"])
    assert after["last_seq"] == before["last_seq"] and after["unread"] == before["unread"] == 0  # no log entries
    assert after["last_message"]["text"] == "dinner at eight?"


async def test_counts_and_who_reacted_in_a_group_ordered_by_count(node, users):
    alice, bob, carol, dave = [await users(n) for n in ("alice", "bob", "carol", "dave")]
    group = await alice.create_group("party", usernames=["bob", "carol", "dave"])
    async with alice.connect() as a:
        ack = await a.send_text(group["id"], "who's coming?")
    await bob.react(group["id"], ack["seq"], "🙋")
    await carol.react(group["id"], ack["seq"], "🎉")
    await dave.react(group["id"], ack["seq"], "🎉")
    found = (await alice.history(group["id"]))[-1]["reactions"]
    assert found == [{"emoji": "🎉", "users": [carol.user["id"], dave.user["id"]]},
                     {"emoji": "🙋", "users": [bob.user["id"]]}]
    assert (await alice.reactions(group["id"])) == {str(ack["seq"]): found}


async def test_reactions_missed_while_away_come_with_history_and_the_reactions_endpoint(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with alice.connect() as a:
        acks = [await a.send_text(chat["id"], f"photo {i}") for i in range(3)]
    # alice's device is away while bob reacts
    await bob.react(chat["id"], acks[0]["seq"], "😂")
    await bob.react(chat["id"], acks[2]["seq"], "😮")
    async with alice.connect() as a:
        await a.synced.wait()
        assert [e for e in a.events_nowait() if e["type"] == "reaction"] == []  # not replayed as events
        held = await alice.reactions(chat["id"], acks[0]["seq"], acks[2]["seq"])
        assert held == {str(acks[0]["seq"]): [{"emoji": "😂", "users": [bob.user["id"]]}],
                        str(acks[2]["seq"]): [{"emoji": "😮", "users": [bob.user["id"]]}]}
        assert await alice.reactions(chat["id"], acks[1]["seq"], acks[1]["seq"]) == {}
        await bob.react(chat["id"], acks[1]["seq"], "👏")  # live again
        assert (await a.wait_for("reaction"))["seq"] == acks[1]["seq"]
    await expect_error("bad_request", alice.reactions(chat["id"], 1, 5000))


async def test_bad_reactions_are_refused_and_change_nothing(node, users):
    alice, bob, mallory = await users("alice"), await users("bob"), await users("mallory")
    chat = await alice.open_direct(username="bob")
    group = await alice.create_group("g", usernames=["bob"])
    async with alice.connect() as a:
        ack = await a.send_text(chat["id"], "hello")
        gone = await a.send_text(chat["id"], "oops")
        await a.delete(chat["id"], gone["id"])
    for bad in ("ok", "", "👍👍", "👍 ", 5, None, "a👍", "\u200d", "🇫"):
        await expect_error("bad_request", bob.request("PUT", f"/api/chats/{chat['id']}/messages/{ack['seq']}/reaction",
                                                      {"emoji": bad}))
    await expect_error("bad_request", bob.request("PUT", f"/api/chats/{chat['id']}/messages/{ack['seq']}/reaction",
                                                  {"emoji": "👍", "extra": 1}))
    for fine in ("👍🏽", "👨‍👩‍👧", "🇫🇷", "1️⃣",
                 "🏳️‍🌈", "☺️", "🏴󠁧󠁢󠁳󠁣󠁴󠁿"):
        assert (await bob.react(chat["id"], ack["seq"], fine))["emoji"] == fine
    await expect_error("not_found", bob.react(chat["id"], gone["seq"], "👍"))  # deleted for everyone
    await expect_error("not_found", bob.react(chat["id"], 99, "👍"))
    await expect_error("not_found", bob.react(group["id"], 1, "👍"))  # a system entry
    await expect_error("not_member", mallory.react(chat["id"], ack["seq"], "👍"))
    await alice.block(bob.user["id"])
    await expect_error("blocked", bob.react(chat["id"], ack["seq"], "😡"))
    await alice.block(bob.user["id"], False)
    assert (await alice.reactions(chat["id"]))[str(ack["seq"])] == [
        {"emoji": "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "users": [bob.user["id"]]}]


async def test_membership_bounds_who_reacts_and_who_is_told(node, users):
    alice, bob, carol = await users("alice"), await users("bob"), await users("carol")
    group = await alice.create_group("club", usernames=["bob"])
    async with alice.connect() as a:
        early = await a.send_text(group["id"], "before carol")
        await alice.add_members(group["id"], [carol.user["id"]])
        late = await a.send_text(group["id"], "after carol")
        async with carol.connect() as c:
            await c.synced.wait()
            await expect_error("not_found", carol.react(group["id"], early["seq"], "👍"))  # not hers to see
            await bob.react(group["id"], early["seq"], "👍")
            await bob.react(group["id"], late["seq"], "🎉")
            got = await c.wait_for("reaction")
            assert got["seq"] == late["seq"]  # carol is told only of what she can see
            assert [e for e in c.events_nowait() if e["type"] == "reaction"] == []
            await a.wait_for("reaction", seq=early["seq"])
        await bob.leave(group["id"])
        await expect_error("not_member", bob.react(group["id"], late["seq"], "😢"))


async def test_deleting_or_expiry_takes_the_reactions_with_the_message(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with alice.connect() as a:
        doomed = await a.send_text(chat["id"], "to be deleted")
        kept = await a.send_text(chat["id"], "kept")
        await bob.react(chat["id"], doomed["seq"], "🔥")
        await bob.react(chat["id"], kept["seq"], "🔥")
        await a.delete(chat["id"], doomed["id"])
    assert list(await alice.reactions(chat["id"])) == [str(kept["seq"])]
    assert "reactions" not in (await alice.history(chat["id"]))[0]  # the tombstone


async def test_an_expired_message_loses_its_reactions(tmp_path):
    async with running_node(make_config(tmp_path, storage={"sweep_interval": 0.1})) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a:
            brief = await a.send_text(chat["id"], "self-destructs", ttl=1)
        await bob.react(chat["id"], brief["seq"], "⏳")

        async def expired() -> bool:
            return not await alice.history(chat["id"])

        await wait_until(expired, 10, interval=0.1)
        key = b"".join(n.to_bytes(8, "big") for n in (int(chat["id"]), brief["seq"]))

        async def purged() -> bool:  # the purge removes the record itself
            return not await node.storage.kv_scan("_core/reactions", key, key + b"\xff" * 8, 10)

        await wait_until(purged, 10, interval=0.1)
        await alice.aclose()
        await bob.aclose()


async def test_the_author_gets_a_push_for_a_reaction_when_offline(tmp_path):
    async with receiver() as hook, running_node(push_config(tmp_path, previews=True)) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a, bob.connect() as b:
            ack = await a.send_text(chat["id"], "new haircut")
            await b.wait_for("message")
        await alice.register_push_target("webhook", f"{hook.url}/alice")
        await bob.react(chat["id"], ack["seq"], "😍")
        body = orjson.loads((await hook.next())["body"])
        keys = ("type", "chat", "from", "message", "seq", "emoji", "count", "sender_name", "text")
        assert {k: body[k] for k in keys} \
            == {"type": "reaction", "chat": chat["id"], "from": bob.user["id"], "message": ack["id"], "seq": ack["seq"],
                "emoji": "😍", "count": 1, "sender_name": "bob", "text": "new haircut"}
        await alice.react(chat["id"], ack["seq"], "🙂")  # one's own: nobody is told by push
        await bob.unreact(chat["id"], ack["seq"])  # taking back: nothing either
        await alice.set_prefs(chat["id"], mute=True)
        await bob.react(chat["id"], ack["seq"], "👀")  # muted: nothing
        async with alice.connect() as a:
            await a.synced.wait()
        assert hook.received_nowait() == []
        await alice.aclose()
        await bob.aclose()
