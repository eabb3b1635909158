"""Groups: membership rules, admins, limits, system messages in order, fan-out, blocking."""

from __future__ import annotations

import pytest
import trio
from conftest import flushed, make_config, new_user, running_node

from node.client import ClientError


async def expect_error(code: str, coro) -> ClientError:
    with pytest.raises(ClientError) as info:
        await coro
    assert info.value.code == code, info.value
    return info.value


def texts(messages):
    return [m.get("text") or f"<{m.get('event')}>" for m in messages]


async def test_group_message_reaches_every_member_and_offline_members_on_resync(node, users):
    alice, bob, carol = await users("alice"), await users("bob"), await users("carol")
    group = await alice.create_group("trip", usernames=["bob", "carol"])
    assert group["kind"] == "group" and group["title"] == "trip" and group["role"] == "admin" and group["members"] == 3
    async with alice.connect() as a, bob.connect() as b:
        await b.synced.wait()
        ack = await a.send_text(group["id"], "hello all")
        assert ack["status"] == "pending"  # carol is offline
        got = await b.wait_for("message", text="hello all")
        assert got["seq"] == ack["seq"] == 2  # seq 1 is the "created" system message
    async with carol.connect() as c:
        await c.synced.wait()
        seen = [e for e in c.events_nowait() if e["type"] == "message"]
        assert [(m["kind"], m.get("event") or m.get("text")) for m in seen] == [("system", "created"), ("text", "hello all")]
        assert seen[0]["users"] == [alice.user["id"], bob.user["id"], carol.user["id"]]


async def test_membership_changes_are_system_messages_in_order(node, users):
    alice, bob, carol, dave = [await users(n) for n in ("alice", "bob", "carol", "dave")]
    group = await alice.create_group("team", members=[bob.user["id"]])
    async with alice.connect() as a:
        await a.send_text(group["id"], "one")
        await alice.add_members(group["id"], [carol.user["id"], dave.user["id"]])
        await a.send_text(group["id"], "two")
        await alice.update_chat(group["id"], title="the team")
        await alice.set_admin(group["id"], bob.user["id"])
        await alice.remove_member(group["id"], dave.user["id"])
        await a.send_text(group["id"], "three")
    history = await bob.history(group["id"])
    assert texts(history) == ["<created>", "one", "<added>", "two", "<renamed>", "<promoted>", "<removed>", "three"]
    assert [m["seq"] for m in history] == list(range(1, 9))
    assert history[4]["title"] == "the team" and history[4]["by"] == alice.user["id"]
    members = {m["user"]["username"]: m["role"] for m in await bob.members(group["id"])}
    assert members == {"alice": "admin", "bob": "admin", "carol": "member"}
    # carol joined at seq 3: she sees nothing before the entry that added her
    assert texts(await carol.history(group["id"])) == ["<added>", "two", "<renamed>", "<promoted>", "<removed>", "three"]
    # dave keeps what he could see until his removal (seq 7), and nothing after
    assert texts(await dave.history(group["id"])) == ["<added>", "two", "<renamed>", "<promoted>", "<removed>"]


async def test_removed_member_gets_nothing_after_and_cannot_send_or_read_new(node, users):
    alice, bob = await users("alice"), await users("bob")
    group = await alice.create_group("g", members=[bob.user["id"]])
    async with bob.connect() as b:
        await b.synced.wait()
        await alice.remove_member(group["id"], bob.user["id"])
        removal = await b.wait_for("message", event="removed")
        assert removal["users"] == [bob.user["id"]]
        with pytest.raises(ClientError) as info:
            await b.send_text(group["id"], "still here?")
        assert info.value.code == "not_member"
        async with alice.connect() as a:
            await a.send_text(group["id"], "after bob left")  # acked once it was offered to every device
        await flushed(b)
        assert not [e for e in b.events_nowait() if e["type"] == "message" and e["seq"] > removal["seq"]]
    bob.cursors.clear()
    async with bob.connect() as b:  # a fresh device of bob: replay stops at his removal
        await b.synced.wait()
        assert [e.get("event") for e in b.events_nowait() if e["type"] == "message"] == ["created", "removed"]
    # the member list he gets is the one of the moment he left (tests/test_former_members.py)
    assert [m["user"]["username"] for m in await bob.members(group["id"])] == ["alice"]


async def test_only_admins_manage_members(node, users):
    alice, bob, carol = await users("alice"), await users("bob"), await users("carol")
    group = await alice.create_group("g", members=[bob.user["id"]])
    await expect_error("forbidden", bob.add_members(group["id"], [carol.user["id"]]))
    await expect_error("forbidden", bob.remove_member(group["id"], alice.user["id"]))
    await expect_error("forbidden", bob.set_admin(group["id"], bob.user["id"]))
    await expect_error("not_member", carol.update_chat(group["id"], title="hijacked"))
    await bob.update_chat(group["id"], title="renamed by a member")  # any member may rename
    await expect_error("conflict", alice.set_admin(group["id"], alice.user["id"], admin=False))  # last admin
    assert len(await bob.history(group["id"])) == 2


async def test_promoting_an_admin_or_demoting_a_member_again_changes_nothing(node, users):
    """PUT and DELETE .../admins/{user_id} are idempotent: a repeated one (a retry whose
    answer was lost) is 204 again and logs nothing more."""
    alice, bob, carol = await users("alice"), await users("bob"), await users("carol")
    group = await alice.create_group("g", members=[bob.user["id"], carol.user["id"]])
    for _ in range(2):
        await alice.set_admin(group["id"], bob.user["id"])
    for _ in range(2):
        await alice.set_admin(group["id"], bob.user["id"], admin=False)
    await alice.set_admin(group["id"], carol.user["id"], admin=False)  # never was one
    await alice.set_admin(group["id"], alice.user["id"])  # already is one
    events = [m.get("event") for m in await alice.history(group["id"])]
    assert events == ["created", "promoted", "demoted"]
    roles = {m["user"]["username"]: m["role"] for m in await alice.members(group["id"])}
    assert roles == {"alice": "admin", "bob": "member", "carol": "member"}
    await expect_error("forbidden", bob.set_admin(group["id"], carol.user["id"], admin=False))  # still admins only
    await expect_error("not_found", alice.set_admin(group["id"], "123"))


async def test_last_admin_leaving_promotes_the_longest_standing_member(node, users):
    alice, bob, carol = await users("alice"), await users("bob"), await users("carol")
    group = await alice.create_group("g", members=[bob.user["id"]])
    await alice.add_members(group["id"], [carol.user["id"]])
    await alice.leave(group["id"])
    members = {m["user"]["username"]: m["role"] for m in await carol.members(group["id"])}
    assert members == {"bob": "admin", "carol": "member"}
    tail = (await carol.history(group["id"]))[-2:]
    assert [(m["event"], m["users"]) for m in tail] == [("left", [alice.user["id"]]), ("promoted", [bob.user["id"]])]
    assert tail[1]["by"] is None  # done by the node


async def test_member_limit(tmp_path):
    async with running_node(make_config(tmp_path, limits={"max_group_members": 3})) as node:
        people = [await new_user(node, f"person{i}") for i in range(5)]
        try:
            err = await expect_error("group_full", people[0].create_group("big", members=[p.user["id"] for p in people[1:]]))
            assert err.status == 409
            group = await people[0].create_group("ok", members=[people[1].user["id"], people[2].user["id"]])
            await expect_error("group_full", people[0].add_members(group["id"], [people[3].user["id"]]))
            assert len(await people[0].members(group["id"])) == 3
        finally:
            for p in people:
                await p.aclose()


async def test_bad_group_requests(node, users):
    alice = await users("alice")
    await expect_error("bad_request", alice.create_group(""))
    await expect_error("bad_request", alice.create_group("x" * 101))
    await expect_error("not_found", alice.request("POST", "/api/groups", {"title": "t", "usernames": ["nobody"]}))
    await expect_error("bad_request", alice.request("POST", "/api/groups", {"title": "t", "members": ["abc"]}))
    direct = await alice.open_direct(username=(await users("bob")).user["username"])
    await expect_error("bad_request", alice.add_members(direct["id"], [alice.user["id"]]))
    assert [c["kind"] for c in await alice.chats()] == ["direct"]


async def test_blocking(node, users):
    alice, bob, carol = await users("alice"), await users("bob"), await users("carol")
    chat = await bob.open_direct(username="alice")
    await alice.block(bob.user["id"])
    async with bob.connect() as b:
        with pytest.raises(ClientError) as info:
            await b.send_text(chat["id"], "hi?")
        assert info.value.code == "blocked"
    async with alice.connect() as a:  # the blocker cannot write either until unblocking
        with pytest.raises(ClientError) as info:
            await a.send_text(chat["id"], "hm")
        assert info.value.code == "blocked"
    await expect_error("blocked", bob.create_group("g", members=[alice.user["id"]]))
    group = await carol.create_group("g", members=[bob.user["id"]])
    await carol.set_admin(group["id"], bob.user["id"])
    await expect_error("blocked", bob.request("POST", f"/api/chats/{group['id']}/members", {"users": [alice.user["id"]]}))
    assert [u["username"] for u in (await alice.request("GET", "/api/blocks"))["users"]] == ["bob"]
    await alice.block(bob.user["id"], blocked=False)
    async with bob.connect() as b:
        assert (await b.send_text(chat["id"], "friends again"))["seq"] == 1


async def test_group_fan_out_is_not_held_up_by_a_stalled_member(tmp_path):
    """One member's device stops reading; the others still get every message at once."""
    import orjson
    from trio_websocket import open_websocket_url

    async with running_node(make_config(tmp_path, limits={"outgoing_queue": 32})) as node:
        people = [await new_user(node, f"member{i}") for i in range(4)]
        try:
            group = await people[0].create_group("g", members=[p.user["id"] for p in people[1:]])
            async with open_websocket_url(node.ws_url, message_queue_size=1) as stalled:
                await stalled.send_message(orjson.dumps({"type": "hello", "token": people[3].token}).decode())
                async with people[0].connect() as sender, people[1].connect() as r1, people[2].connect() as r2:
                    await r1.synced.wait()
                    await r2.synced.wait()
                    text = "y" * 6000
                    with trio.fail_after(20):
                        for _ in range(40):
                            await sender.send_many([{"chat": group["id"], "text": text}] * 25)
                        for r in (r1, r2):
                            n = 0
                            while n < 1000:
                                n += (await r.next_event())["type"] == "message"
        finally:
            for p in people:
                await p.aclose()
