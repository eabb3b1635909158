"""Who is a contact, for the `contacts` setting of last seen, presence and the profile
photo: someone you have written to (a message in your 1-1 chat). Opening a chat with
someone, writing to them unanswered, or adding them to a group makes no one their contact."""

from __future__ import annotations

import io

import trio
import trio.lowlevel
from conftest import wait_for_notifications


def square() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(out, "JPEG")
    return out.getvalue()


async def sees(viewer, owner, photo_id: str) -> dict[str, bool]:
    presence = await viewer.presence(owner.user["id"])
    user = await viewer.user_info(owner.user["id"])
    download = await viewer.fetch_media(photo_id, thumbnail=True)
    return {"last_seen": presence.get("last_seen") is not None, "photo": user["photo"] == photo_id,
            "download": download.status_code == 200}


NOTHING = {"last_seen": False, "photo": False, "download": False}
EVERYTHING = {"last_seen": True, "photo": True, "download": True}


async def test_only_people_you_wrote_to_are_your_contacts(node, users):
    alice, mallory = await users("alice"), await users("mallory")  # alice keeps the default: contacts
    photo = await alice.upload(square(), name="me.jpg")
    await alice.set_photo(photo["id"])
    async with alice.connect():
        pass  # alice has a last-seen time
    await wait_for_notifications(node)
    # a chat mallory opened, her messages, a group she made: none of that is alice's consent
    direct = await mallory.open_direct(username="alice")
    async with mallory.connect() as m:
        await m.send_text(direct["id"], "hi alice, remember me?")
    group = await mallory.create_group("friends", members=[alice.user["id"]])
    async with alice.connect() as a:
        await a.synced.wait()
        await a.send_text(group["id"], "who are you all?")  # writing in a group is not enough
    await wait_for_notifications(node)
    assert await sees(mallory, alice, photo["id"]) == NOTHING
    assert [c["peer"]["photo"] for c in await mallory.chats() if c["kind"] == "direct"] == [None]
    assert {m["user"]["username"]: m["user"]["photo"] for m in await mallory.members(group["id"])}["alice"] is None
    # alice answers in their 1-1 chat: mallory is her contact now
    async with alice.connect() as a:
        await a.send_text(direct["id"], "oh hi")
    await wait_for_notifications(node)
    assert await sees(mallory, alice, photo["id"]) == EVERYTHING
    # and mallory, who wrote to alice first, made alice her contact back then
    assert (await alice.presence(mallory.user["id"])).get("hidden") is not True


async def test_live_presence_reaches_contacts_only(node, users):
    alice, bob, mallory = await users("alice"), await users("bob"), await users("mallory")
    to_bob = await alice.open_direct(username="bob")
    async with alice.connect() as a:
        await a.send_text(to_bob["id"], "hi bob")  # bob is alice's contact
    await mallory.open_direct(username="alice")  # mallory is not
    await wait_for_notifications(node)
    async with bob.connect() as b, mallory.connect() as m:
        await b.synced.wait()
        await m.synced.wait()
        async with alice.connect():
            assert (await b.wait_for("presence", user=alice.user["id"]))["online"] is True
            await wait_for_notifications(node)
        assert (await b.wait_for("presence", user=alice.user["id"]))["online"] is False
        await wait_for_notifications(node)
        await trio.lowlevel.checkpoint()
        assert not [e for e in m.events_nowait() if e["type"] == "presence" and e["user"] == alice.user["id"]]
