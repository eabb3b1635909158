"""Profile and group photos: set and removed, shown to whom the owner's last-seen setting
allows (and downloadable on the same terms), group photos set by admins for the members."""

from __future__ import annotations

import io

import pytest

from node.client import ChatClient, ClientError


async def expect_error(code: str, coro) -> ClientError:
    with pytest.raises(ClientError) as info:
        await coro
    assert info.value.code == code, info.value
    return info.value


def square(color=(30, 90, 200), side: int = 512) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (side, side), color).save(out, "JPEG")
    return out.getvalue()


async def can_download(client: ChatClient, media_id: str) -> bool:
    response = await client.fetch_media(media_id, thumbnail=True)
    assert response.status_code in (200, 403), response.text
    return response.status_code == 200


async def test_a_profile_photo_follows_the_last_seen_setting(node, users):
    alice, bob, stranger = await users("alice"), await users("bob"), await users("stranger")
    chat = await alice.open_direct(username="bob")
    await node.post_message(int(alice.user["id"]), int(chat["id"]), {"kind": "text", "text": "hi"})  # bob: a contact
    photo = await alice.upload(square(), name="me.jpg")
    async with bob.connect() as b:
        await b.synced.wait()
        me = await alice.set_photo(photo["id"])
        assert me["photo"] == photo["id"] and (await alice.me())["user"]["photo"] == photo["id"]
        event = await b.wait_for("user")  # a contact is told
        assert event["user"]["photo"] == photo["id"]
    assert (await bob.chat(chat["id"]))["peer"]["photo"] == photo["id"]
    assert (await bob.chats())[0]["peer"]["photo"] == photo["id"]
    assert (await bob.user_info(alice.user["id"]))["photo"] == photo["id"]
    assert await can_download(bob, photo["id"])
    # the default is "contacts": someone alice never wrote to sees initials
    assert (await stranger.user_info(alice.user["id"]))["photo"] is None
    assert [u["photo"] for u in await stranger.search_users("alice")] == [None]
    assert not await can_download(stranger, photo["id"])
    await alice.settings(last_seen="everyone")
    assert (await stranger.user_info(alice.user["id"]))["photo"] == photo["id"]
    assert await can_download(stranger, photo["id"])
    await alice.settings(last_seen="nobody")
    assert (await bob.chat(chat["id"]))["peer"]["photo"] is None
    assert not await can_download(bob, photo["id"])
    assert await can_download(alice, photo["id"])  # one's own, always
    await alice.settings(last_seen="contacts")
    await bob.block(alice.user["id"])  # blocking hides it both ways
    assert (await bob.user_info(alice.user["id"]))["photo"] is None
    assert not await can_download(bob, photo["id"])
    await bob.block(alice.user["id"], False)
    assert await can_download(bob, photo["id"])

    async with bob.connect() as b:
        await b.synced.wait()
        assert (await alice.set_photo(None))["photo"] is None  # back to initials
        assert (await b.wait_for("user"))["user"]["photo"] is None
    assert (await bob.chat(chat["id"]))["peer"]["photo"] is None
    assert not await can_download(bob, photo["id"])  # no longer a photo, never shared


async def test_only_an_image_of_ones_own_can_be_a_photo(node, users):
    alice, bob = await users("alice"), await users("bob")
    text = await alice.upload(b"hello, this is a plain text file\n" * 10, name="notes.txt")
    theirs = await bob.upload(square(), name="bob.jpg")
    await expect_error("bad_request", alice.set_photo(text["id"]))
    await expect_error("forbidden", alice.set_photo(theirs["id"]))
    await expect_error("not_found", alice.set_photo("123456789"))
    for bad in ({}, {"media": "x"}, {"media": 5}, {"media": theirs["id"], "extra": 1}):
        await expect_error("bad_request", alice.request("PUT", "/api/me/photo", bad))
    assert (await alice.me())["user"].get("photo") is None


async def test_a_group_photo_is_set_by_admins_for_the_members(node, users):
    alice, bob, carol, stranger = [await users(n) for n in ("alice", "bob", "carol", "stranger")]
    group = await alice.create_group("climbers", usernames=["bob", "carol"])
    photo = await alice.upload(square((200, 60, 60)), name="group.jpg")
    async with bob.connect() as b:
        await b.synced.wait()
        summary = await alice.set_group_photo(group["id"], photo["id"])
        assert summary["photo"] == photo["id"]
        note = await b.wait_for("message", event="photo_changed")
        assert (note["kind"], note["event"], note["by"], note["photo"]) == ("system", "photo_changed",
                                                                            alice.user["id"], photo["id"])
    assert (await bob.chat(group["id"]))["photo"] == photo["id"]
    assert await can_download(bob, photo["id"]) and not await can_download(stranger, photo["id"])
    bob_photo = await bob.upload(square((0, 0, 0)), name="b.jpg")
    await expect_error("forbidden", bob.set_group_photo(group["id"], bob_photo["id"]))  # not an admin
    await expect_error("not_member", stranger.set_group_photo(group["id"], None))
    direct = await alice.open_direct(username="bob")
    await expect_error("bad_request", alice.set_group_photo(direct["id"], photo["id"]))
    await carol.leave(group["id"])
    assert not await can_download(carol, photo["id"])  # members only
    summary = await alice.set_group_photo(group["id"], None)
    assert summary["photo"] is None
    assert (await bob.history(group["id"]))[-1]["event"] == "photo_removed"
    assert not await can_download(bob, photo["id"])


async def test_photos_are_not_collected_while_in_use(node, users):
    alice, bob = await users("alice"), await users("bob")
    direct = await alice.open_direct(username="bob")
    await node.post_message(int(alice.user["id"]), int(direct["id"]), {"kind": "text", "text": "hi"})  # bob: a contact
    group = await alice.create_group("g", usernames=["bob"])
    mine = await alice.upload(square(), name="me.jpg")
    ours = await alice.upload(square((9, 9, 9)), name="group.jpg")
    await alice.set_photo(mine["id"])
    await alice.set_group_photo(group["id"], ours["id"])
    media = node.plugins.pm.get_plugin("media")
    far = (await alice.me())["user"]["created"] + 10 * 365 * 24 * 3600 * 1000
    stats = await media.collect_garbage(now=far)
    assert stats["items"] == 0
    assert await can_download(bob, mine["id"]) and await can_download(bob, ours["id"])
    replacement = await alice.upload(square((1, 2, 3)), name="new.jpg")
    await alice.set_photo(replacement["id"])  # the old one may go now
    await media.collect_garbage(now=far + 1)
    assert (await alice.fetch_media(mine["id"])).status_code == 404
    assert await can_download(bob, replacement["id"])
