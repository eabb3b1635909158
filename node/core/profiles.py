"""Profile and group photos.

A photo is an uploaded image (the media plugin's): a user's own upload as their profile
photo (`photo` in their user record), or an upload of a group admin as the group's
(`photo` in the chat record, changed through the sequencer with a `system` entry). The
`check_photo` gate lets the media plugin refuse what is not an image of the user's, and
note a group's photo so it may serve it to the members.

Who sees a profile photo follows the owner's last-seen setting (``last_seen``: everyone,
contacts, nobody; unset: the last-seen plugin's ``default_visibility``): the owner always,
nobody where either blocks the other. A contact of the owner is someone the owner has
written to (a message in their 1-1 chat: `Chats.contacts_among`); sharing a group, or a
chat someone else opened, makes no one a contact. Users are described to each viewer with `photo` only
where the viewer may see it, and a photo's download is allowed on the same terms
(`PluginContext.photo_visible`). A group's photo is for its members.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import orjson

from ..storage import WriteBatch
from .accounts import public_user
from .chats import Awaitable, Chats, Effect, Reads
from .errors import ChatError, bad_request
from .snowflake import parse_id

if TYPE_CHECKING:
    from .services import Services

VISIBILITY = ("everyone", "contacts", "nobody")


def default_visibility(node: Services) -> str:
    """Unset last-seen setting: the last-seen plugin's default, if it is loaded."""
    try:
        settings = node.plugins.settings("lastseen")  # type: ignore[attr-defined]
    except (KeyError, AttributeError):
        return "contacts"
    value = getattr(settings, "default_visibility", "contacts")
    return value if value in VISIBILITY else "contacts"


def visibility_of(node: Services, record: dict[str, Any]) -> str:
    """A user's last-seen setting (what applies when unset: `default_visibility`)."""
    return (record.get("settings") or {}).get("last_seen") or default_visibility(node)


async def photos_visible(node: Services, viewer: int, records: list[dict[str, Any]]) -> set[int]:
    """The owners (of these user records) whose profile photo `viewer` may see."""
    out: set[int] = set()
    contacts_needed = []
    for record in records:
        owner = int(record["id"])
        if owner == viewer:
            out.add(owner)
            continue
        setting = visibility_of(node, record)
        if setting == "nobody" or await node.blocks.either_loaded(viewer, owner):
            continue
        if setting == "everyone":
            out.add(owner)
        elif setting == "contacts":
            contacts_needed.append(owner)
    if contacts_needed:
        out |= await node.chats.contacts_among(viewer, contacts_needed)
    return out


async def photo_visible(node: Services, viewer: int, owner: int) -> bool:
    """Whether `viewer` may see `owner`'s profile photo."""
    record = await node.accounts.user(owner)
    return record is not None and owner in await photos_visible(node, viewer, [record])


async def user_for(node: Services, viewer: int, record: dict[str, Any]) -> dict[str, Any]:
    """A user as `viewer` sees them: `public_user`, with `photo` (a media id, or null)."""
    user = public_user(record)
    photo = record.get("photo")
    user["photo"] = photo if photo and int(record["id"]) in await photos_visible(node, viewer, [record]) else None
    return user


async def add_photos(node: Services, viewer: int, users: list[dict[str, Any]]) -> None:
    """Give public users (as dicts) the `photo` `viewer` may see, in place."""
    records = await node.accounts.load_users(int(u["id"]) for u in users if u and u.get("id"))
    with_photo = [r for r in records.values() if r.get("photo")]
    visible = await photos_visible(node, viewer, with_photo) if with_photo else set()
    for user in users:
        if not user or not user.get("id"):
            continue
        record = records.get(int(user["id"]))
        photo = record.get("photo") if record else None
        user["photo"] = photo if photo and int(user["id"]) in visible else None


async def announce_profile(node: Services, user_id: int) -> None:
    """A changed profile photo, live to its owner's devices and to everyone who shares a
    chat with them, each told what they may see (a `user` event)."""
    record = await node.accounts.user(user_id)
    if record is None:
        return
    for uid in (user_id, *await node.chats.contacts_of(user_id)):  # each sees what they may (wherever they are)
        payload = orjson.dumps({"type": "user", "user": await user_for(node, uid, record)})
        node.routing.send_to_users((uid,), payload)


def media_id_of(body: dict[str, Any]) -> str:
    if set(body) != {"media"}:
        raise bad_request("give 'media' (the id of an uploaded image) and nothing else")
    try:
        return str(parse_id(body["media"]))
    except (ValueError, TypeError):
        raise bad_request("'media' must be the id of an upload") from None


async def set_profile_photo(node: Services, user_id: int, media_id: str | None) -> dict[str, Any]:
    """Set (or, with None, remove) the user's profile photo; returns the user as they see it."""
    if media_id is not None:
        if not node.plugins.has_impls("check_photo"):
            raise ChatError("bad_request", "photos need the media plugin, which is not enabled")
        await node.plugins.gate("check_photo", user_id=user_id, chat_id=0, media_id=int(media_id))
    record = await node.accounts.set_photo(user_id, media_id)
    await announce_profile(node, user_id)
    return await user_for(node, user_id, record)


@attrs.define(eq=False)
class SetChatPhoto(Awaitable):
    """A group's photo set (or removed, with `media_id` None) by one of its admins."""

    user_id: int = 0
    chat_id: int = 0
    media_id: str | None = None

    def reads(self, reads: Reads) -> None:
        reads.chats.add(self.chat_id)

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        from .groups import _announce, _require_group, _system

        chat, _ = _require_group(chats, self.chat_id, self.user_id, admin=True)
        if self.media_id == chat.record.get("photo"):
            return lambda: self.resolve(chat)
        if self.media_id is None:
            chat.record.pop("photo", None)
            record, raw = _system(chats, chat, batch, now, self.user_id, "photo_removed")
        else:
            chat.record["photo"] = self.media_id
            record, raw = _system(chats, chat, batch, now, self.user_id, "photo_changed", photo=self.media_id)
        chats.save_chat_record(chat, batch)

        def effect() -> None:
            _announce(chats, chat, record, raw)
            self.resolve(chat)

        return effect


async def set_group_photo(node: Services, user_id: int, chat_id: int, media_id: str | None) -> Any:
    """Check the upload (the media plugin's gate), then set the group's photo."""
    chat = await node.chats.load(chat_id)
    member = chat.member(user_id) if chat is not None else None
    if chat is None or member is None:
        raise ChatError("not_member")
    if chat.kind != "group":
        raise bad_request("only groups have a photo of their own")
    if member["role"] != "admin":
        raise ChatError("forbidden", "only group admins may do this")
    if media_id is not None:
        if not node.plugins.has_impls("check_photo"):
            raise ChatError("bad_request", "photos need the media plugin, which is not enabled")
        await node.plugins.gate("check_photo", user_id=user_id, chat_id=chat_id, media_id=int(media_id))
    return await node.chats.run(SetChatPhoto(user_id=user_id, chat_id=chat_id, media_id=media_id))
