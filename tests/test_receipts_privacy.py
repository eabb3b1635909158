"""Read receipts off means never revealed: not by `read` events (per member or the group's
watermark), not by the status of messages in history, not by the receipts endpoint, not
by `peer_read_seq` in chat summaries, not by `read_seq` in member lists; in 1-1 chats and
groups alike. And small groups get per-member `delivered`/`read` events, as docs say."""

from __future__ import annotations

from conftest import make_config, new_user, running_node


async def settle(node) -> None:
    from conftest import wait_for_notifications

    await wait_for_notifications(node)


async def test_a_group_member_who_hides_reads_is_not_revealed(node, users):
    alice, bob, carol = [await users(n) for n in ("alice", "bob", "carol")]
    await carol.settings(read_receipts=False)
    group = await alice.create_group("g", members=[bob.user["id"], carol.user["id"]])
    async with alice.connect() as a, bob.connect() as b, carol.connect() as c:
        await b.synced.wait(), await c.synced.wait()
        msg = await a.send_text(group["id"], "read me")
        await b.wait_for("message", text="read me"), await c.wait_for("message", text="read me")
        await carol.mark_read(group["id"], msg["seq"])
        await bob.mark_read(group["id"], msg["seq"])
        assert (await a.wait_for("read", user=bob.user["id"]))["seq"] == msg["seq"]  # bob shares
        await settle(node)
        reads = [e for e in a.events_nowait() if e["type"] == "read"]
        assert not [e for e in reads if e.get("user") == carol.user["id"] or e.get("all")], reads
    assert [m.get("status") for m in await alice.history(group["id"])][-1] == "delivered"
    assert await alice.receipts(group["id"], msg["seq"]) == {
        "read": [bob.user["id"]], "delivered": [carol.user["id"]], "pending": []}
    members = {m["user"]["username"]: m["read_seq"] for m in await alice.members(group["id"])}
    assert members == {"alice": msg["seq"], "bob": msg["seq"], "carol": None}
    own = {m["user"]["username"]: m["read_seq"] for m in await carol.members(group["id"])}
    assert own["carol"] == msg["seq"] and own["bob"] is None  # and carol sees no one's (reciprocal)
    # the same once carol shares again: nothing was lost, her position shows
    await carol.settings(read_receipts=True)
    assert [m.get("status") for m in await alice.history(group["id"])][-1] == "read"


async def test_a_1_1_peer_who_hides_reads_is_not_revealed(node, users):
    alice, dave = await users("alice"), await users("dave")
    await dave.settings(read_receipts=False)
    chat = await alice.open_direct(username="dave")
    async with alice.connect() as a, dave.connect() as d:
        msg = await a.send_text(chat["id"], "hi dave")
        await d.wait_for("message", text="hi dave")
        await dave.mark_read(chat["id"], msg["seq"])
        await a.wait_for("delivered")
        await settle(node)
        assert not [e for e in a.events_nowait() if e["type"] == "read"]
    summary = await alice.chat(chat["id"])
    assert summary["peer_read_seq"] is None and summary["peer_delivered_seq"] == msg["seq"]
    assert [c["peer_read_seq"] for c in await alice.chats()] == [None]
    assert {m["user"]["username"]: m["read_seq"] for m in await alice.members(chat["id"])}["dave"] is None
    assert (await dave.chat(chat["id"]))["read_seq"] == msg["seq"]  # dave's own position is his
    assert (await alice.receipts(chat["id"], msg["seq"]))["read"] == []


async def test_small_groups_get_per_member_delivered_and_read_events(node, users):
    alice, bob, carol = [await users(n) for n in ("alice", "bob", "carol")]
    group = await alice.create_group("g", members=[bob.user["id"], carol.user["id"]])
    async with alice.connect() as a, bob.connect() as b:
        await b.synced.wait()
        msg = await a.send_text(group["id"], "hello")
        await b.wait_for("message", text="hello")
        delivered = await a.wait_for("delivered", user=bob.user["id"])
        assert delivered == {"type": "delivered", "chat": group["id"], "user": bob.user["id"], "seq": msg["seq"]}
        await bob.mark_read(group["id"], msg["seq"])
        read = await a.wait_for("read", user=bob.user["id"])
        assert read == {"type": "read", "chat": group["id"], "user": bob.user["id"], "seq": msg["seq"]}
        async with carol.connect() as c:  # the last one: the watermark too
            await c.wait_for("message", text="hello")
            assert (await a.wait_for("delivered", user=carol.user["id"]))["seq"] == msg["seq"]
            assert (await a.wait_for("delivered", all=True))["seq"] == msg["seq"]
            await carol.mark_read(group["id"], msg["seq"])
            assert (await a.wait_for("read", user=carol.user["id"]))["seq"] == msg["seq"]
            assert (await a.wait_for("read", all=True))["seq"] == msg["seq"]
        await settle(node)
        assert not [e for e in b.events_nowait() if e["type"] in ("delivered", "read") and e.get("user") != bob.user["id"]]


async def test_groups_above_the_limit_get_the_watermark_only(tmp_path):
    config = make_config(tmp_path, plugins={"receipts": {"member_events_group_limit": 2}})
    async with running_node(config) as node:
        alice, bob, carol = [await new_user(node, n) for n in ("alice", "bob", "carol")]
        try:
            group = await alice.create_group("g", members=[bob.user["id"], carol.user["id"]])
            async with alice.connect() as a, bob.connect() as b, carol.connect() as c:
                await b.synced.wait(), await c.synced.wait()
                msg = await a.send_text(group["id"], "hello")
                await bob.mark_read(group["id"], msg["seq"])
                await carol.mark_read(group["id"], msg["seq"])
                assert (await a.wait_for("read", all=True))["seq"] == msg["seq"]
                await settle(node)
                assert not [e for e in a.events_nowait() if e["type"] in ("delivered", "read")
                            and e.get("user") not in (None, alice.user["id"])]
        finally:
            for person in (alice, bob, carol):
                await person.aclose()


def test_receipts_settings_are_checked(tmp_path):
    import pytest

    from node.config import ConfigError
    from node.plugin_manager import Plugins

    with pytest.raises(ConfigError, match=r"plugins\.receipts\.member_events_group_limit: must be >= 0"):
        Plugins(make_config(tmp_path, plugins={"receipts": {"member_events_group_limit": -1}}).plugins,
                load_entrypoints=False)
