"""Chat management, per user: mute, archive, pin, mark as unread, clear history, delete for
me, and reports to the node's admins."""

from __future__ import annotations

import orjson
import pytest
from conftest import ADMIN_TOKEN, make_config
from test_push import push_config, receiver

from node.client import ChatClient, ClientError
from node.core.chats import now_ms
from node.testing import new_user, running_node, wait_until


async def expect_error(code: str, coro) -> ClientError:
    with pytest.raises(ClientError) as info:
        await coro
    assert info.value.code == code, info.value
    return info.value


def prefs(summary: dict) -> dict:
    keys = ("muted", "muted_until", "archived", "pinned", "marked_unread", "cleared_seq")
    return {k: summary[k] for k in keys}


async def test_mute_for_a_time_or_always_is_told_to_the_users_other_devices(node, users):
    alice, _bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    assert prefs(chat) == {"muted": False, "muted_until": None, "archived": False, "pinned": None,
                           "marked_unread": False, "cleared_seq": 0}
    async with alice.connect() as device:
        await device.synced.wait()
        summary = await alice.set_prefs(chat["id"], mute=8 * 3600)
        assert summary["muted"] is True
        assert abs(summary["muted_until"] - (summary["created"] + 8 * 3600 * 1000)) < 60_000
        event = await device.wait_for("chat_prefs")
        assert event["chat"] == chat["id"] and event["muted"] is True
        assert event["muted_until"] == summary["muted_until"]

        summary = await alice.set_prefs(chat["id"], mute=True)
        assert (summary["muted"], summary["muted_until"]) == (True, None)  # always
        assert (await device.wait_for("chat_prefs"))["muted_until"] is None
        assert (await alice.chat(chat["id"]))["muted"] is True
        summary = await alice.set_prefs(chat["id"], mute=False)
        assert (summary["muted"], summary["muted_until"]) == (False, None)
    # bad input is refused and changes nothing
    await alice.set_prefs(chat["id"], mute=60)
    for bad in ({"mute": 0}, {"mute": -5}, {"mute": "8h"}, {"mute": 10**12}, {"archived": "yes"}, {"colour": "red"},
                {}):
        await expect_error("bad_request", alice.request("PATCH", f"/api/chats/{chat['id']}/prefs", bad))
    assert (await alice.chat(chat["id"]))["muted"] is True
    stranger = await users("mallory")
    await expect_error("not_member", stranger.set_prefs(chat["id"], mute=True))


async def test_a_timed_mute_ends_by_itself(node, users):
    alice, _bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    await alice.set_prefs(chat["id"], mute=1)
    assert (await alice.chat(chat["id"]))["muted"] is True

    async def unmuted() -> bool:
        return not (await alice.chat(chat["id"]))["muted"]

    await wait_until(unmuted, 10, interval=0.1)
    assert (await alice.chat(chat["id"]))["muted_until"] is None


async def test_an_archived_chat_comes_back_with_a_new_message_unless_it_is_muted(node, users):
    alice, bob, carol = await users("alice"), await users("bob"), await users("carol")
    with_bob = await alice.open_direct(username="bob")
    with_carol = await alice.open_direct(username="carol")
    await alice.set_prefs(with_bob["id"], archived=True)
    await alice.set_prefs(with_carol["id"], archived=True, mute=True)
    listed = {c["id"]: c for c in await alice.chats()}
    assert listed[with_bob["id"]]["archived"] and listed[with_carol["id"]]["archived"]
    async with bob.connect() as b, carol.connect() as c:
        await b.send_text(with_bob["id"], "hello again")
        await c.send_text(with_carol["id"], "psst")
    listed = {c["id"]: c for c in await alice.chats()}
    assert listed[with_bob["id"]]["archived"] is False  # it came back
    assert listed[with_carol["id"]]["archived"] is True  # muted: it stays archived
    assert listed[with_carol["id"]]["unread"] == 1  # the badge still counts


async def test_at_most_three_chats_are_pinned_and_they_come_first(node, users):
    alice = await users("alice")
    others = [await users(f"friend{i}") for i in range(5)]
    chats = [await alice.open_direct(username=o.user["username"]) for o in others]
    async with others[4].connect() as last:
        await last.send_text(chats[4]["id"], "newest")
    for chat in chats[:3]:
        pinned = (await alice.set_prefs(chat["id"], pinned=True))["pinned"]
        await wait_until(lambda pinned=pinned: now_ms() > pinned)  # the next pin is later (Unix ms)
    error = await expect_error("conflict", alice.set_prefs(chats[3]["id"], pinned=True))
    assert "3" in error.message
    order = [c["id"] for c in await alice.chats()]
    assert order[:3] == [chats[2]["id"], chats[1]["id"], chats[0]["id"]]  # the latest pin on top
    assert order[3] == chats[4]["id"]  # then the most recently active
    await alice.set_prefs(chats[0]["id"], pinned=False)
    summary = await alice.set_prefs(chats[3]["id"], pinned=True)
    assert summary["pinned"] and summary["archived"] is False
    # archiving unpins
    summary = await alice.set_prefs(chats[3]["id"], archived=True)
    assert summary["pinned"] is None and summary["archived"] is True


async def test_mark_as_unread_until_the_chat_is_read(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with bob.connect() as b:
        ack = await b.send_text(chat["id"], "lunch?")
    await alice.mark_read(chat["id"], ack["seq"])
    async with alice.connect() as device:
        await device.synced.wait()
        summary = await alice.set_prefs(chat["id"], marked_unread=True)
        assert summary["marked_unread"] is True and summary["unread"] == 0
        await device.wait_for("chat_prefs", marked_unread=True)
        await alice.mark_read(chat["id"], ack["seq"])  # nothing new to read: the mark still goes
        event = await device.wait_for("chat_prefs", marked_unread=False)
        assert event["chat"] == chat["id"]
    assert (await alice.chat(chat["id"]))["marked_unread"] is False


async def test_clear_history_is_for_me_only_and_holds_across_reconnects(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with alice.connect() as a, bob.connect() as b:
        for text in ("one", "two", "three"):
            await a.send_text(chat["id"], text)
        await b.send_text(chat["id"], "four")
        await a.wait_for("message", text="four")
    alice.cursors.clear()  # a new device: replay from the start
    summary = await alice.clear_history(chat["id"])
    assert summary["cleared_seq"] == 4 and summary["unread"] == 0
    assert await alice.history(chat["id"]) == []
    assert [m["text"] for m in await bob.history(chat["id"])] == ["one", "two", "three", "four"]
    async with alice.connect() as a:
        await a.synced.wait()
        assert [e for e in a.events_nowait() if e["type"] == "message"] == []  # nothing cleared is replayed
        async with bob.connect() as b:
            await b.send_text(chat["id"], "five")
        got = await a.wait_for("message")
        assert (got["text"], got["seq"]) == ("five", 5)
    assert [m["text"] for m in await alice.history(chat["id"])] == ["five"]
    assert (await alice.chat(chat["id"]))["unread"] == 1


async def test_delete_a_chat_for_me_until_a_new_message_brings_it_back(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with bob.connect() as b:
        await b.send_text(chat["id"], "old news")
    await alice.set_prefs(chat["id"], pinned=True)
    await alice.delete_chat(chat["id"])
    assert chat["id"] not in [c["id"] for c in await alice.chats()]
    hidden = {c["id"]: c for c in await alice.chats(hidden=True)}[chat["id"]]
    assert hidden["hidden"] and hidden["pinned"] is None and hidden["cleared_seq"] == 1
    async with bob.connect() as b:
        await b.send_text(chat["id"], "are you there?")
    back = {c["id"]: c for c in await alice.chats()}[chat["id"]]
    assert back["hidden"] is False and back["unread"] == 1
    assert [m["text"] for m in await alice.history(chat["id"])] == ["are you there?"]
    assert len(await bob.history(chat["id"])) == 2


async def test_a_group_left_can_be_deleted_for_me(node, users):
    alice, bob = await users("alice"), await users("bob")
    group = await alice.create_group("book club", usernames=[bob.user["username"]])
    await bob.leave(group["id"])
    assert group["id"] in [c["id"] for c in await bob.chats()]  # a left group stays listed
    await bob.delete_chat(group["id"])
    assert group["id"] not in [c["id"] for c in await bob.chats()]
    await expect_error("not_member", (await users("mallory")).delete_chat(group["id"]))


async def test_a_report_keeps_the_last_messages_and_may_block(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with bob.connect() as b, alice.connect() as a:
        for i in range(7):
            await b.send_text(chat["id"], f"spam {i}")
        await a.send_text(chat["id"], "stop it")
    report = await alice.report(user=bob.user["id"], reason="spam", block=True)
    assert report["messages"] == 5
    assert [u["id"] for u in (await alice.request("GET", "/api/blocks"))["users"]] == [bob.user["id"]]

    admin = ChatClient(node.http_url)  # a loopback client: the admin API needs no token here
    listed = await admin.admin_reports()
    assert len(listed["reports"]) == 1 and listed["has_more"] is False
    stored = listed["reports"][0]
    assert (stored["id"], stored["reporter"], stored["user"], stored["chat"], stored["reason"]) == (
        report["id"], alice.user["id"], bob.user["id"], chat["id"], "spam")
    assert [m["text"] for m in stored["messages"]] == [f"spam {i}" for i in range(2, 7)]  # not alice's own
    assert listed["users"][bob.user["id"]]["username"] == "bob"

    group = await bob.create_group("shady", usernames=[(await users("carol")).user["username"]])
    await expect_error("not_member", alice.report(chat=group["id"]))  # alice cannot see it
    for bad in ({}, {"user": "x"}, {"user": bob.user["id"], "reason": 5}, {"user": bob.user["id"], "why": "?"},
                {"chat": chat["id"], "block": True}):
        await expect_error("bad_request", alice.request("POST", "/api/reports", bad))
    await expect_error("not_found", alice.report(user=alice.user["id"]))
    assert len((await admin.admin_reports())["reports"]) == 1  # nothing was stored by those

    await admin.dismiss_report(report["id"])
    assert (await admin.admin_reports())["reports"] == []
    await expect_error("not_found", admin.dismiss_report(report["id"]))
    await admin.aclose()


async def test_reports_page_newest_first(node, users):
    alice, bob, carol = await users("alice"), await users("bob"), await users("carol")
    group = await alice.create_group("g", usernames=["bob", "carol"])
    ids = [(await alice.report(chat=group["id"], reason=f"r{i}"))["id"] for i in range(3)]
    ids.append((await carol.report(user=bob.user["id"]))["id"])
    async with ChatClient(node.http_url) as admin:
        first = await admin.admin_reports(limit=2)
        assert [r["id"] for r in first["reports"]] == ids[::-1][:2] and first["has_more"]
        rest = await admin.admin_reports(limit=2, before=first["reports"][-1]["id"])
        assert [r["id"] for r in rest["reports"]] == ids[::-1][2:] and not rest["has_more"]
        assert rest["reports"][0]["chat_kind"] == "group"


async def test_admin_reports_need_the_admin_token_when_one_is_set(tmp_path):
    config = make_config(tmp_path, admin={"token": ADMIN_TOKEN})
    async with running_node(config) as node:
        alice = await new_user(node, "alice")
        await new_user(node, "bob")
        async with ChatClient(node.http_url) as outsider:
            await expect_error("unauthorized", outsider.admin_reports())
        async with ChatClient(node.http_url, token=ADMIN_TOKEN) as admin:
            assert (await admin.admin_reports())["reports"] == []
        await alice.aclose()


async def test_no_push_for_a_muted_chat(tmp_path):
    config = push_config(tmp_path)
    async with receiver() as hook, running_node(config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        await bob.register_push_target("webhook", f"{hook.url}/bob")
        await bob.set_prefs(chat["id"], mute=True)
        async with alice.connect() as a:
            await a.send_text(chat["id"], "muted, so silent")
            await bob.set_prefs(chat["id"], mute=False)
            ack = await a.send_text(chat["id"], "now you hear me")
        request = await hook.next()
        assert request["path"] == "/bob"
        body = orjson.loads(request["body"])
        assert (body["seq"], body["count"]) == (ack["seq"], 1)  # only the second one
        async with ChatClient(node.http_url) as admin:
            stats = (await admin.request("GET", "/api/admin/stats"))["plugins"]
        assert stats["push"]["skipped_muted"] == 1
        await alice.aclose()
        await bob.aclose()
