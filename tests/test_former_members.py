"""Former members: a member who leaves or is removed reads the history up to the entry that
says so, and sees the group frozen at that moment on every endpoint and event (chat list,
title, member count and list, photo, statuses, reactions, search); admins act only on
what they can see."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from conftest import wait_for_notifications, wait_until

from node.client import ClientError

DOCS = Path(__file__).resolve().parent.parent / "docs"


async def expect_error(code: str, coro) -> ClientError:
    with pytest.raises(ClientError) as info:
        await coro
    assert info.value.code == code, info.value
    return info.value


def square(color=(30, 90, 200), side: int = 64) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (side, side), color).save(out, "JPEG")
    return out.getvalue()


async def test_a_removed_member_sees_the_group_as_it_was_when_they_left(node, users):
    alice, bob, carol, dave = [await users(n) for n in ("alice", "bob", "carol", "dave")]
    group = await alice.create_group("plans", members=[bob.user["id"], carol.user["id"]])
    gid = group["id"]
    async with alice.connect() as a, bob.connect() as b, carol.connect() as c:
        await b.synced.wait(), await c.synced.wait()
        await a.send_text(gid, "hello")
        mine = await c.send_text(gid, "from carol, about the plans")
        await b.wait_for("message", text="from carol, about the plans")
        await a.wait_for("message", text="from carol, about the plans")
        await bob.react(gid, mine["seq"], "👍")  # before carol left: she keeps seeing it
        await c.wait_for("reaction")
        await alice.remove_member(gid, carol.user["id"])
        removal = await c.wait_for("message", event="removed")
        await wait_for_notifications(node)
        seen = c.events_nowait()  # what came before (and with) her removal
        assert not [e for e in seen if e["type"] == "message" and e["seq"] > removal["seq"]]
        before = {m["seq"]: m.get("status") for m in await carol.history(gid)}
        frozen = await carol.chat(gid)
        # ... and then the group moves on without her
        await alice.update_chat(gid, title="the real plans", ttl=3600)
        await alice.add_members(gid, [dave.user["id"]])
        photo = await alice.upload(square(), name="group.jpg")
        await alice.set_group_photo(gid, photo["id"])
        secret = await a.send_text(gid, "TOP SECRET")
        await bob.react(gid, mine["seq"], "🔥")  # bob changes his reaction to carol's message
        await alice.react(gid, mine["seq"], "😮")
        await bob.mark_read(gid, secret["seq"])
        await alice.set_admin(gid, bob.user["id"])
        async with dave.connect() as d:
            await d.wait_for("message", text="TOP SECRET")
        await wait_for_notifications(node)
        after_removal = [e for e in c.events_nowait()]
        assert after_removal == [], after_removal  # no message, receipt, reaction or typing event

    summary = await carol.chat(gid)
    assert summary["last_message"]["seq"] == removal["seq"] == summary["last_seq"] == summary["left_seq"]
    assert summary["last_message"]["event"] == "removed"
    assert (summary["title"], summary["members"], summary["ttl"], summary["photo"]) == ("plans", 2, 0, None)
    assert summary == frozen  # nothing moved since she left
    listed = [c for c in await carol.chats() if c["id"] == gid][0]
    assert listed["last_message"]["seq"] == removal["seq"] and listed["title"] == "plans"
    assert "TOP SECRET" not in str(await carol.chats())
    members = {m["user"]["username"]: m["role"] for m in await carol.members(gid)}
    assert members == {"alice": "admin", "bob": "member"}  # not dave, not bob's promotion
    assert all(m["read_seq"] is None and m["delivered_seq"] is None for m in await carol.members(gid))
    history = await carol.history(gid)
    assert history[-1]["seq"] == removal["seq"]
    assert {m["seq"]: m.get("status") for m in history} == before  # statuses of that moment
    mine_now = [m for m in history if m["seq"] == mine["seq"]][0]
    # bob's 👍 was replaced after she left: neither the old one (gone) nor the new one shows
    assert mine_now.get("reactions") in (None, [{"emoji": "👍", "users": [bob.user["id"]]}])
    assert "😮" not in str(mine_now) and "🔥" not in str(mine_now)
    reactions = await carol.reactions(gid)
    assert "😮" not in str(reactions) and "🔥" not in str(reactions)
    async def found(client, query: str) -> list[int]:
        return [r["message"]["seq"] for r in (await client.search(query))["results"]]

    await wait_until(lambda: found(alice, "SECRET"), timeout=30)  # indexed (an index may lag the log)
    assert await found(carol, "SECRET") == []
    assert await found(carol, "plans") == [mine["seq"]]
    # her own preferences still change; what she is shown stays frozen
    assert (await carol.set_prefs(gid, archived=True))["title"] == "plans"
    # and she may not act in it any more
    await expect_error("not_member", carol.react(gid, mine["seq"], "😢"))
    await expect_error("not_member", carol.mark_read(gid, removal["seq"]))
    await expect_error("not_member", carol.receipts(gid, mine["seq"]))
    assert (await carol.fetch_media(photo["id"], thumbnail=True)).status_code == 403


async def test_a_member_who_leaves_sees_the_same(node, users):
    alice, bob = await users("alice"), await users("bob")
    group = await alice.create_group("club", members=[bob.user["id"]])
    await bob.leave(group["id"])
    await alice.update_chat(group["id"], title="club (renamed)")
    async with alice.connect() as a:
        await a.send_text(group["id"], "after bob left")
    summary = await bob.chat(group["id"])
    assert (summary["title"], summary["members"], summary["last_message"]["event"]) == ("club", 1, "left")
    assert [m["user"]["username"] for m in await bob.members(group["id"])] == ["alice"]


async def test_an_admin_acts_only_on_what_they_can_see(node, users):
    alice, bob, carol = await users("alice"), await users("bob"), await users("carol")
    group = await alice.create_group("g", members=[bob.user["id"]])
    async with bob.connect() as b:
        old = await b.send_text(group["id"], "before carol")
    await alice.add_members(group["id"], [carol.user["id"]])
    await alice.set_admin(group["id"], carol.user["id"])
    async with carol.connect() as c, bob.connect() as b:
        await c.synced.wait()
        with pytest.raises(ClientError) as info:  # by id, from before she joined: not hers to see
            await c.delete(group["id"], old["id"])
        assert info.value.code == "not_found"
        later = await b.send_text(group["id"], "after carol joined")
        await c.wait_for("message", text="after carol joined")
        await c.delete(group["id"], later["id"])  # an admin deletes what she can see
    assert [m["text"] for m in await alice.history(group["id"]) if m["kind"] == "text"] == ["before carol"]
    # the same for one's own messages from an earlier membership, and for what one cleared
    await alice.remove_member(group["id"], bob.user["id"])
    await alice.add_members(group["id"], [bob.user["id"]])
    async with bob.connect() as b:
        await b.synced.wait()
        with pytest.raises(ClientError) as info:
            await b.delete(group["id"], old["id"])
        assert info.value.code == "not_found"
    async with alice.connect() as a:
        mine = await a.send_text(group["id"], "to be cleared")
        await alice.clear_history(group["id"])
        with pytest.raises(ClientError) as info:
            await a.delete(group["id"], mine["id"])
        assert info.value.code == "not_found"


async def test_one_rule_for_former_members_history_in_the_docs_too(node, users):
    alice, bob = await users("alice"), await users("bob")
    group = await alice.create_group("g", members=[bob.user["id"]])
    async with alice.connect() as a:
        await a.send_text(group["id"], "seen by bob")
    await alice.remove_member(group["id"], bob.user["id"])
    async with alice.connect() as a:
        await a.send_text(group["id"], "not seen by bob")
    assert [m.get("text") or m["event"] for m in await bob.history(group["id"])] == ["created", "seen by bob",
                                                                                        "removed"]
    text = " ".join((DOCS / "protocol.md").read_text().split())
    assert "a member who leaves or is removed sees up to the entry that says so" in text
    assert "Only current members may send, read history" not in text
