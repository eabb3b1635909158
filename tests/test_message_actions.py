"""Message actions beyond sending: forwarding (text and media, marked "forwarded"), stars
and the starred list, deleting for me, and message info in 1-1 chats."""

from __future__ import annotations

import io

import pytest
from conftest import make_config

from node.client import ClientError
from node.testing import new_user, running_node, wait_until


async def expect_error(code: str, coro) -> ClientError:
    with pytest.raises(ClientError) as info:
        await coro
    assert info.value.code == code, info.value
    return info.value


def png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(out, "PNG")
    return out.getvalue()


async def test_forward_text_and_media_to_several_chats(node, users):
    alice, bob, carol, dave = [await users(n) for n in ("alice", "bob", "carol", "dave")]
    with_bob = await alice.open_direct(username="bob")
    with_carol = await bob.open_direct(username="carol")
    group = await bob.create_group("friends", usernames=["carol", "dave"])
    photo = await alice.upload(png(), name="red.png")
    async with alice.connect() as a:
        await a.send_text(with_bob["id"], "look at this", kind="image", media=photo["id"])
    original = (await bob.history(with_bob["id"]))[-1]
    assert "forwarded" not in original
    async with bob.connect() as b:
        for chat in (with_carol, group):  # one message per chat, as the web client does
            await b.send_text(chat["id"], None, kind="image", media=original["media"]["id"], forwarded=True)
            await b.send_text(chat["id"], "a joke I heard", forwarded=True)
    for chat in (with_carol, group):
        photo_message, text_message = (await carol.history(chat["id"]))[-2:]
        assert photo_message["forwarded"] is True and photo_message["media"]["id"] == photo["id"]
        assert (text_message["text"], text_message["forwarded"]) == ("a joke I heard", True)
    assert (await carol.download(photo["id"]))[:8] == b"\x89PNG\r\n\x1a\n"  # carol may download it now
    # dave saw it in the group, so he may pass it on; erin never saw it, so she cannot
    async with dave.connect() as d:
        await d.send_text((await dave.open_direct(username="alice"))["id"], None, kind="image", media=photo["id"],
                          forwarded=True)
    erin = await users("erin")
    with_alice = await erin.open_direct(username="alice")
    async with erin.connect() as d:
        await expect_error("forbidden", d.send_text(with_alice["id"], None, kind="image", media=photo["id"],
                                                     forwarded=True))
        await expect_error("bad_request", d.send_text(with_alice["id"], "x", forwarded="yes"))
        await expect_error("bad_request", d.send_text(with_alice["id"], "x", kind="edit",
                                                       target=original["id"], forwarded=True))


async def test_stars_and_the_starred_list(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    group = await alice.create_group("g", usernames=["bob"])
    async with alice.connect() as a, bob.connect() as b:
        await b.synced.wait()
        first = await a.send_text(chat["id"], "remember the milk")
        second = await a.send_text(group["id"], "meeting at noon")
        third = await a.send_text(chat["id"], "never mind")
        await b.wait_for("message", text="never mind")
        async with bob.connect() as phone:  # another device of bob's
            await phone.synced.wait()
            await bob.star(chat["id"], first["seq"])
            event = await phone.wait_for("starred")
            assert event == {"type": "starred", "chat": chat["id"], "seq": first["seq"], "starred": True}
        await bob.star(group["id"], second["seq"])
        await bob.star(chat["id"], third["seq"])
        await bob.star(chat["id"], third["seq"])  # again: still one star
        history = await bob.history(chat["id"])
        assert [m.get("starred", False) for m in history] == [True, True]
        assert all("starred" not in m for m in await alice.history(chat["id"]))  # stars are bob's own
        listed = await bob.starred()
        assert [m["text"] for m in listed["messages"]] == ["never mind", "meeting at noon", "remember the milk"]
        assert listed["has_more"] is False and all(m["starred"] for m in listed["messages"])
        page = await bob.starred(limit=2)
        assert len(page["messages"]) == 2 and page["has_more"]
        rest = await bob.starred(offset=page["next_offset"], limit=2)
        assert [m["text"] for m in rest["messages"]] == ["remember the milk"] and not rest["has_more"]

        await a.delete(chat["id"], third["id"])  # deleted for everyone: gone from the list
        await bob.star(chat["id"], first["seq"], False)
        assert [m["text"] for m in (await bob.starred())["messages"]] == ["meeting at noon"]
    await bob.leave(group["id"])  # a former member keeps what they saw
    assert [m["text"] for m in (await bob.starred())["messages"]] == ["meeting at noon"]
    await expect_error("not_found", bob.star(group["id"], 1))  # a system entry
    await expect_error("not_found", bob.star(chat["id"], 99))
    await expect_error("not_found", bob.star(chat["id"], third["seq"]))  # deleted
    await expect_error("not_member", (await users("mallory")).star(chat["id"], first["seq"]))


async def test_delete_for_me_hides_it_from_me_alone_on_every_device(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with alice.connect() as a, bob.connect() as b:
        await b.synced.wait()
        acks = [await a.send_text(chat["id"], text) for text in ("one", "two", "three")]
        await b.wait_for("message", text="three")
        await bob.star(chat["id"], acks[1]["seq"])
        await bob.delete_for_me(chat["id"], [acks[1]["seq"], acks[2]["seq"]])
        event = await b.wait_for("deleted_for_me")
        assert event == {"type": "deleted_for_me", "chat": chat["id"], "seqs": [acks[1]["seq"], acks[2]["seq"]]}
    page = await bob.request("GET", f"/api/chats/{chat['id']}/messages")
    assert [m["text"] for m in page["messages"]] == ["one"]
    assert page["next_before"] == acks[0]["seq"]
    assert [m["text"] for m in await alice.history(chat["id"])] == ["one", "two", "three"]
    assert (await bob.starred())["messages"] == []  # its star went with it
    only_hidden = await bob.request("GET", f"/api/chats/{chat['id']}/messages", limit=2)
    assert only_hidden["messages"] == [] and only_hidden["has_more"] and only_hidden["next_before"] == 2
    bob.cursors.clear()  # a new device: the replay leaves them out too
    async with bob.connect() as b:
        await b.synced.wait()
        replayed = [e["text"] for e in b.events_nowait() if e["type"] == "message"]
        assert replayed == ["one"]
    await expect_error("bad_request", bob.delete_for_me(chat["id"], []))
    await expect_error("bad_request", bob.request("POST", f"/api/chats/{chat['id']}/messages/delete",
                                                  {"seqs": ["1"]}))
    await expect_error("not_found", bob.delete_for_me(chat["id"], [acks[0]["seq"], 42]))
    assert [m["text"] for m in await bob.history(chat["id"])] == ["one"]  # nothing of that changed
    await expect_error("not_member", (await users("mallory")).delete_for_me(chat["id"], [1]))


async def test_message_info_in_a_1_1_chat(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with alice.connect() as a:
        ack = await a.send_text(chat["id"], "did you get this?")
        assert await alice.receipts(chat["id"], ack["seq"]) == {"read": [], "delivered": [],
                                                                 "pending": [bob.user["id"]]}
        async with bob.connect() as b:
            await b.synced.wait()
            await a.wait_for("delivered")
            assert (await alice.receipts(chat["id"], ack["seq"]))["delivered"] == [bob.user["id"]]
            await bob.mark_read(chat["id"], ack["seq"])
            await a.wait_for("read")
        assert (await alice.receipts(chat["id"], ack["seq"]))["read"] == [bob.user["id"]]
    await expect_error("forbidden", bob.receipts(chat["id"], ack["seq"]))  # the sender's only


async def test_an_expired_starred_message_leaves_the_list(tmp_path):
    async with running_node(make_config(tmp_path, storage={"sweep_interval": 0.1})) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a:
            brief = await a.send_text(chat["id"], "gone soon", ttl=1)
            await a.send_text(chat["id"], "stays")
        await bob.star(chat["id"], brief["seq"])

        async def unstarred() -> bool:
            return not (await bob.starred())["messages"]

        await wait_until(unstarred, 10, interval=0.1)
        await alice.aclose()
        await bob.aclose()
