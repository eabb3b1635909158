"""Administration: accounts, devices and chats as an operator sees them (docs/admin.md).

One `Admin` serves both ways of reaching it: the admin API of a running node
(node/web/admin.py), and `chatnode admin --offline` on a stopped node's storage
(node/admin_cli.py). Both give the same JSON. What needs the running node (deleting an
account: its groups are left through the sequencer and every node must hear of it) is
refused offline.

Offline, nothing can tell the plugins that a device was logged out (the push plugin
forgets its push targets then): such revocations are written to `_core/revoked` and told
to the plugins when a node next starts (`announce_offline_revocations`), before it
accepts a connection.

Every change is logged at INFO (logger ``node.core.admin``): who, what, how many devices.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from ..storage import Storage, WriteBatch
from .accounts import Accounts, Device, public_user
from .errors import ChatError, bad_request
from .snowflake import parse_id

if TYPE_CHECKING:
    from .services import Services

log = logging.getLogger(__name__)

REVOKED = "_core/revoked"  # device id -> {"user": id}: logged out offline, not yet told to plugins
MAX_SCAN = 1_000_000  # users a find looks at, at most


def admin_user(record: dict[str, Any]) -> dict[str, Any]:
    """A user as an admin sees them: the public fields, and the account's state."""
    return {
        **public_user(record),
        "photo": record.get("photo"),
        "disabled": record.get("disabled"),  # Unix ms it was disabled, or null
        "deleted": record.get("deleted"),  # Unix ms it was deleted, or null
        "service": bool(record.get("service")),  # a bot's account (no password)
    }


def _member_view(user: dict[str, Any] | None, user_id: int, record: dict[str, Any]) -> dict[str, Any]:
    return {
        "user": admin_user(user) if user else {"id": str(user_id)},
        "role": record["role"],
        "joined": record.get("joined"),
        "from_seq": record.get("from_seq"),
        "until_seq": record.get("until_seq"),
        "delivered_seq": record.get("delivered"),
        "read_seq": record.get("read"),
        "current": record.get("until_seq") is None,
    }


class Admin:
    """Admin actions over a node's accounts and storage. `node` is the running node (None
    offline); `on_revoked` collects the devices logged out offline."""

    def __init__(self, accounts: Accounts, storage: Storage, node: Services | None = None) -> None:
        self.accounts = accounts
        self.storage = storage
        self.node = node

    # -- users ---------------------------------------------------------------------------

    async def resolve(self, ref: object) -> dict[str, Any]:
        """A user given by username or by id (a name is tried first); deleted accounts
        are found by id only."""
        if not isinstance(ref, str) or not ref:
            raise bad_request("give a username or a user id")
        user = await self.accounts.user_by_name(ref) if len(ref) <= 32 else None
        if user is None:
            try:
                user = await self.accounts.user(parse_id(ref))
            except ValueError:
                user = None
        if user is None:
            raise ChatError("not_found", f"no user {ref!r}")
        return user

    async def list_users(self, prefix: str = "", after: str = "", limit: int = 100) -> dict[str, Any]:
        """Users by username (deleted accounts have none), `limit` at a time after `after`."""
        found = await self.storage.search_usernames(prefix.lower(), limit + 1, after=after.lower())
        users = await self.accounts.load_users([uid for _, uid in found])
        page = [admin_user(users[uid]) for _, uid in found[:limit] if uid in users]
        return {"users": page, "next": found[limit - 1][0] if len(found) > limit else None}

    async def find_users(self, query: str, limit: int = 100) -> dict[str, Any]:
        """Users whose id is `query`, or whose username or display name contains it
        (ignoring case). Looks at every account: meant for people, not for scripts that
        run often."""
        needle = query.casefold().strip()
        if not needle:
            raise bad_request("give some text to look for")
        out: list[dict[str, Any]] = []
        scanned = 0
        async for rows in self.storage.export("users", 1000):
            for user_id, record in rows:
                scanned += 1
                if record is None:
                    continue
                exact = str(user_id) == needle
                if exact or (not record.get("deleted") and (
                        needle in record.get("username", "") or needle in record.get("display_name", "").casefold())):
                    out.append(admin_user(record))
            if len(out) >= limit or scanned >= MAX_SCAN:
                break
        out.sort(key=lambda u: u["username"])
        return {"users": out[:limit], "more": len(out) > limit}

    async def show_user(self, ref: str) -> dict[str, Any]:
        user = await self.resolve(ref)
        user_id = int(user["id"])
        chats = await self.storage.chat_ids_of(user_id)
        return {"user": admin_user(user), "devices": await self.accounts.devices_of(user_id), "chats": len(chats)}

    async def create_user(self, body: dict[str, Any]) -> dict[str, Any]:
        unknown = body.keys() - {"username", "password", "display_name"}
        if unknown:
            raise bad_request(f"unknown fields: {', '.join(sorted(unknown))}")
        record = await self.accounts.create_account(body.get("username"), body.get("password"),
                                                    body.get("display_name"))
        log.info("admin: created user %s (%s)", record["id"], record["username"])
        return {"user": admin_user(record)}

    async def set_disabled(self, ref: str, disabled: bool) -> dict[str, Any]:
        user = await self.resolve(ref)
        self._not_deleted(user)
        record, revoked = await self.accounts.set_disabled(int(user["id"]), disabled)
        log.info("admin: %s user %s (%s)%s", "disabled" if disabled else "enabled", user["id"], user["username"],
                 f", {revoked} devices logged out" if disabled else "")
        return {"user": admin_user(record), "revoked": revoked}

    async def set_password(self, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        if set(body) != {"password"}:
            raise bad_request("give 'password' (and nothing else)")
        user = await self.resolve(ref)
        self._not_deleted(user)
        revoked = await self.accounts.set_password(int(user["id"]), body["password"])
        log.info("admin: set a new password for user %s (%s), %d devices logged out", user["id"], user["username"],
                 revoked)
        return {"user": admin_user(await self.resolve(user["id"])), "revoked": revoked}

    async def delete_user(self, ref: str) -> dict[str, Any]:
        """Delete an account (docs/admin.md, "Deleting an account"): the record becomes a
        tombstone, every device is logged out, the account leaves its groups and blocks
        its 1-1 peers; its messages stay, shown as from "Deleted account"."""
        node = self.node
        if node is None:
            raise ChatError("unavailable", "deleting an account needs the running node")
        from .groups import Leave  # (the sequencer's operations: not needed offline)
        from .profiles import set_profile_photo

        user = await self.resolve(ref)
        self._not_deleted(user)
        user_id = int(user["id"])
        if user.get("photo"):
            await set_profile_photo(node, user_id, None)  # the media plugin collects it
        tombstone, revoked = await self.accounts.delete_account(user_id)
        await node.announce_user(user_id, public_user(tombstone))  # (while its groups still count)
        groups_left, peers = 0, set()
        chats = await self.storage.load_chats(await self.storage.chat_ids_of(user_id))
        for chat_id, chat in chats.items():
            member = chat.members.get(user_id)
            if member is None:
                continue
            if chat.record.get("kind") == "group":
                if member.get("until_seq") is None:
                    try:
                        await node.chats.run(Leave(user_id=user_id, chat_id=chat_id))
                        groups_left += 1
                    except ChatError as exc:
                        if exc.code != "not_member":  # (left meanwhile)
                            raise
            else:
                peers.update(uid for uid in chat.members if uid != user_id)
        if peers:  # nothing can be sent to it 1-1 any more (`blocked`)
            batch = WriteBatch()
            for peer in sorted(peers):
                batch.put_block(user_id, peer)
            await self.storage.write(batch)
            node.blocks.forget((user_id,))
            node.blocks.on_change(user_id)
        log.info("admin: deleted user %s (%s): %d devices logged out, left %d groups", user["id"], user["username"],
                 revoked, groups_left)
        return {"user": admin_user(tombstone), "revoked": revoked, "groups_left": groups_left,
                "direct_chats": len(peers)}

    @staticmethod
    def _not_deleted(user: dict[str, Any]) -> None:
        if user.get("deleted"):
            raise ChatError("not_found", "that account was deleted")

    # -- devices -----------------------------------------------------------------------

    async def devices(self, ref: str) -> dict[str, Any]:
        user = await self.resolve(ref)
        return {"user": admin_user(user), "devices": await self.accounts.devices_of(int(user["id"]))}

    async def revoke_devices(self, ref: str, device_ids: Iterable[str] | None) -> dict[str, Any]:
        """Log out some (None: every one) of a user's devices."""
        user = await self.resolve(ref)
        ids = None
        if device_ids is not None:
            try:
                ids = {parse_id(d) for d in device_ids}
            except ValueError:
                raise ChatError("not_found", "no such device") from None
        revoked = await self.accounts.revoke_devices(int(user["id"]), ids)
        log.info("admin: logged out %d devices of user %s (%s)", revoked, user["id"], user["username"])
        return {"revoked": revoked}

    # -- chats -------------------------------------------------------------------------

    async def chat(self, chat_id: int, *, former: bool = False) -> dict[str, Any]:
        """A chat and its members (with `former`, those who left or were removed too)."""
        loaded = (await self.storage.load_chats([chat_id])).get(chat_id)
        if loaded is None or not loaded.record:
            raise ChatError("not_found", "no such chat")
        record = loaded.record
        users = await self.accounts.load_users(loaded.members)
        members = [_member_view(users.get(uid), uid, m) for uid, m in loaded.members.items()
                   if former or m.get("until_seq") is None]
        members.sort(key=lambda m: (not m["current"], m["role"] != "admin", m["joined"] or 0))
        chat = {"id": str(chat_id), "kind": record.get("kind"), "title": record.get("title", ""),
                "created": record.get("created"), "created_by": record.get("created_by"),
                "last_seq": loaded.last_seq, "ttl": record.get("ttl", 0), "photo": record.get("photo"),
                "members": sum(1 for m in loaded.members.values() if m.get("until_seq") is None)}
        return {"chat": chat, "members": members}

    # -- counts ------------------------------------------------------------------------

    async def counts(self) -> dict[str, Any]:
        """Accounts, devices, chats and log entries, counted by reading every record (a
        few seconds per million rows)."""
        users = {"total": 0, "disabled": 0, "deleted": 0, "service": 0}
        async for rows in self.storage.export("users", 1000):
            for _uid, record in rows:
                if record is None:
                    continue
                users["total"] += 1
                for flag in ("disabled", "deleted", "service"):
                    users[flag] += bool(record.get(flag))
        devices = 0
        async for rows in self.storage.export("tokens", 1000):
            devices += len(rows)
        chats = {"direct": 0, "group": 0}
        entries = 0
        async for rows in self.storage.export("chats", 1000):
            for _cid, record, last_seq in rows:
                if record:
                    kind = record.get("kind", "direct")
                    chats[kind] = chats.get(kind, 0) + 1
                entries += last_seq or 0
        return {"users": users, "devices": devices, "chats": chats, "log_entries": entries}


# -- offline revocations ---------------------------------------------------------------------


def queue_offline_revocation(batch: WriteBatch, device: Device) -> None:
    """Remember a device logged out while no node ran, for the plugins (see module doc)."""
    batch.kv_put(REVOKED, device.device_id.to_bytes(8, "big"), orjson.dumps({"user": str(device.user_id)}))


async def announce_offline_revocations(node: Services) -> int:
    """Tell the plugins of devices logged out by `chatnode admin --offline` (at start-up,
    before connections are accepted); returns how many."""
    told = 0
    while True:
        rows = await node.storage.kv_scan(REVOKED, b"", None, 1000)
        if not rows:
            return told
        batch = WriteBatch()
        for key, value in rows:
            user_id = int(orjson.loads(value)["user"])
            node.plugins.notify("on_device_revoked", user_id=user_id, device_id=int.from_bytes(key, "big"))
            batch.kv_delete(REVOKED, key)
            told += 1
        await node.storage.write(batch)
        if len(rows) < 1000:
            return told
