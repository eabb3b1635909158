"""Last seen and presence: online/offline for people who share a chat, a persisted "last
seen" time, and typing indicators.

Presence changes are coalesced: a user must stay online (or offline) for `grace`
seconds before contacts are told, so a flapping connection sends nothing. Last-seen times
are kept in memory and written with the next commit of anything (at the latest after
`flush_interval`, and before contacts are told the user went offline, so that every node of
a cluster then answers the time the event carried): a reconnect storm costs no commit per
disconnect, and the plugin's notification queue never backs up behind the disk. Who may see a
user's presence follows their `last_seen` setting (everyone / contacts / nobody), and it
is reciprocal as in WhatsApp: whoever hides theirs sees no one's. Blocked users never see
it. A user's contacts are the people they have written to (a message in their 1-1 chat,
`ctx.is_contact`): opening a chat with someone, or adding them to a group, does not make
you their contact. Live presence events go to those who may see it among the people who
share a 1-1 chat or a small group with the user. Typing indicators are ephemeral: never stored, forwarded at most once per
`typing_interval` per user and chat, and they expire on the client after `typing_ttl`.

While storage cannot be read or written (a database failover), an announcement is tried
again `RETRY` seconds later and unwritten last-seen times are kept for the next flush:
nothing of it stops the node.
"""

from __future__ import annotations

import heapq
import logging
import time
from typing import Any

import attrs
import trio

from ... import ChatError, Client, PluginContext, Request, Route, StoreBatch, check_fields, get_id, hookimpl, parse_id
from . import hooks

log = logging.getLogger(__name__)

TYPING_FIELDS = frozenset({"type", "chat", "typing"})
RETRY = 1.0  # seconds before an announcement or a flush that failed is tried again
IN_FLIGHT = 60.0  # seconds a time taken into a commit is remembered (commits end well before)
VISIBILITY = ("everyone", "contacts", "nobody")


@attrs.frozen
class LastSeenSettings:
    grace: float = attrs.field(default=2.0, validator=attrs.validators.ge(0.0))  # seconds a change must hold
    typing_ttl: float = attrs.field(default=6.0, validator=attrs.validators.gt(0.0))  # seconds a typing hint lasts
    typing_interval: float = attrs.field(default=2.0, validator=attrs.validators.ge(0.0))  # least seconds between forwards
    default_visibility: str = attrs.field(default="contacts", validator=attrs.validators.in_(VISIBILITY))
    # Live presence events go through 1-1 chats and groups up to this size; in bigger groups
    # (as in WhatsApp) members ask when they look (GET /api/users/<id>/presence), so a
    # 500-member group coming online is not 250,000 events.
    live_group_limit: int = attrs.field(default=32, validator=attrs.validators.ge(0))
    # At most this long (seconds) before a last-seen time is on disk when nothing else commits.
    flush_interval: float = attrs.field(default=1.0, validator=attrs.validators.gt(0.0))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class LastSeenPlugin:
    name = "lastseen"

    def __init__(self) -> None:
        self.ctx: Any = None
        self.settings = LastSeenSettings()
        self._announced: dict[int, bool] = {}  # what contacts were last told: online?
        self._changed: dict[int, float] = {}  # user -> monotonic time of an unannounced change
        # The same changes by time, so the announcer finds the due ones without a scan of all
        # of them (a reconnect storm changes thousands at once); entries no longer in
        # `_changed` with that time are skipped.
        self._due: list[tuple[float, int]] = []
        self._wakeup = trio.Event()
        self._typing_sent: dict[tuple[int, int], float] = {}
        self._unwritten: dict[int, int] = {}  # user -> last seen (ms), not yet stored
        # user -> (last seen ms, monotonic time): taken into a commit that may not have ended
        # yet (or failed), so a presence asked meanwhile still has it
        self._in_flight: dict[int, tuple[int, float]] = {}
        self._unwritten_added = trio.Event()

    @hookimpl
    def register_settings(self):
        return ("lastseen", LastSeenSettings)

    @hookimpl
    def register_hookspecs(self):
        return hooks

    @hookimpl
    async def startup(self, ctx: PluginContext, nursery) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.times = ctx.store.table("times")
        ctx.store.on_commit(self._take_unwritten, self._not_written)
        nursery.start_soon(self._announcer)
        nursery.start_soon(self._flusher)
        nursery.start_soon(self._forget_in_flight)

    @hookimpl
    async def shutdown(self, ctx: PluginContext) -> None:
        if self._unwritten:
            await self._write_unwritten()

    # -- presence ------------------------------------------------------------------

    @hookimpl
    def on_user_online(self, user_id: int) -> None:
        self._announced.setdefault(user_id, False)
        self._change(user_id)

    @hookimpl
    def on_user_offline(self, user_id: int) -> None:
        # Offline without having come online here: in a cluster, the user's home failed with
        # their devices, and contacts were told they were online by that node.
        self._announced.setdefault(user_id, True)
        self._unwritten[user_id] = now_ms()
        self._unwritten_added.set()
        self._change(user_id)

    def _take_unwritten(self, batch: StoreBatch) -> None:
        """The last-seen times not yet stored, as writes (a commit hook: they join the
        next transaction, whoever commits it)."""
        taken = time.monotonic()
        for user_id, seen in self._unwritten.items():
            batch.put("times", user_id.to_bytes(8, "big"), seen.to_bytes(8, "big"))
            self._in_flight[user_id] = (seen, taken)
        self._unwritten.clear()

    def _not_written(self, batch: StoreBatch) -> None:
        """The commit these times rode on failed: keep them for the next (a newer time
        noted meanwhile wins)."""
        taken = {int.from_bytes(key, "big"): int.from_bytes(value, "big") for key, value in batch.puts("times")}
        self._unwritten = taken | self._unwritten
        self._unwritten_added.set()

    async def _forget_in_flight(self) -> None:
        """Times taken into commits long ended are read from storage again."""
        while True:
            await trio.sleep(IN_FLIGHT / 2)
            old = time.monotonic() - IN_FLIGHT
            for user_id in [u for u, (_, taken) in self._in_flight.items() if taken < old]:
                del self._in_flight[user_id]

    async def _write_unwritten(self) -> None:
        """Write the last-seen times not yet stored; if that fails, keep them (a newer time
        noted meanwhile wins) for the next try."""
        batch = self.ctx.store.batch()
        self._take_unwritten(batch)
        try:
            await self.ctx.store.write(batch)
        except BaseException:
            self._not_written(batch)
            raise

    async def _flusher(self) -> None:
        """Make sure last-seen times reach the disk within `flush_interval` even when
        nothing else is committed (again after RETRY while storage refuses them)."""
        while True:
            await self._unwritten_added.wait()
            self._unwritten_added = trio.Event()
            await trio.sleep(self.settings.flush_interval)
            if self._unwritten:
                try:
                    await self._write_unwritten()
                except Exception as exc:  # storage away: keep them, try again
                    log.warning("last-seen times not stored yet (%s); trying again", exc)
                    await trio.sleep(RETRY)
                    self._unwritten_added.set()

    def _change(self, user_id: int, since: float | None = None) -> None:
        """Note a change to announce `grace` seconds after `since` (now), unless one is
        pending for the user already."""
        if user_id not in self._changed:
            since = trio.current_time() if since is None else since
            self._changed[user_id] = since
            heapq.heappush(self._due, (since, user_id))
        self._wakeup.set()

    async def _announcer(self) -> None:
        """Tell contacts about presence changes that held for `grace` seconds."""
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            while self._due:
                since, user_id = self._due[0]
                if self._changed.get(user_id) != since:
                    heapq.heappop(self._due)  # announced already (a later change has its own entry)
                    continue
                await trio.sleep_until(since + self.settings.grace)
                if self._due[0] != (since, user_id):
                    continue  # an earlier one came meanwhile (a retry): that first
                heapq.heappop(self._due)
                del self._changed[user_id]
                try:
                    await self._announce(user_id)
                except Exception as exc:  # storage away: tell them later
                    log.warning("presence of user %d not announced yet (%s); trying again", user_id, exc)
                    # due again RETRY from now (unless a newer change is pending)
                    self._change(user_id, trio.current_time() + RETRY - self.settings.grace)

    async def _announce(self, user_id: int) -> None:
        ctx = self.ctx
        online = await ctx.is_online(user_id)
        if self._announced.get(user_id, False) == online:
            return  # it flapped back: nothing to tell
        if not online and user_id in self._unwritten:
            # Stored before anyone is told: in a cluster, other nodes answer presence from
            # storage, and must give the last-seen time the event carries.
            await self._write_unwritten()
        if await self.visibility(user_id) == "nobody":
            self._announced[user_id] = online
            return
        event = await self.presence(user_id, None) | {"type": "presence"}
        told = []
        for contact in await ctx.contacts_of(user_id, max_group=self.settings.live_group_limit):
            # an offline one costs nothing: the event reaches only connected devices
            if await self.may_see(contact, user_id):
                told.append(contact)
        self._announced[user_id] = online  # (only now: a read that failed above is tried again)
        ctx.send_to_users(told, event)

    async def visibility(self, user_id: int) -> str:
        user = await self.ctx.user(user_id)
        return user.settings.get("last_seen", self.settings.default_visibility) if user else "nobody"

    async def may_see(self, viewer: int, user_id: int) -> bool:
        if viewer == user_id:
            return True
        if await self.ctx.blocked(viewer, user_id):
            return False
        if await self.visibility(viewer) == "nobody":  # reciprocal: hide yours, see no one's
            return False
        mine = await self.visibility(user_id)
        return mine == "everyone" or (mine == "contacts" and await self.ctx.is_contact(user_id, viewer))

    async def presence(self, user_id: int, viewer: int | None) -> dict[str, Any]:
        """What `viewer` may know of `user_id` (None: already checked)."""
        if viewer is not None and not await self.may_see(viewer, user_id):
            return {"user": str(user_id), "online": None, "last_seen": None, "hidden": True}
        seen = self._unwritten.get(user_id)
        if seen is None:
            raw = await self.times.get(user_id.to_bytes(8, "big"))
            stored = int.from_bytes(raw, "big") if raw else 0
            in_flight = self._in_flight.get(user_id, (0, 0.0))[0]  # stored by now, or soon, or retried
            seen = max(stored, in_flight) or None
        online = await self.ctx.is_online(user_id)  # anywhere in the cluster, asked of the user's home
        return {"user": str(user_id), "online": online, "last_seen": seen}

    @hookimpl
    def register_routes(self, ctx: PluginContext):
        async def presence(request: Request, user_id: str):
            viewer = await request.user_id()
            try:
                target = parse_id(user_id)
            except ValueError:
                raise ChatError("not_found") from None
            if await ctx.user(target) is None:
                raise ChatError("not_found")
            return await self.presence(target, viewer)

        return [Route("GET", "/api/users/<user_id>/presence", presence)]

    # -- typing --------------------------------------------------------------------

    @hookimpl
    def register_frame_types(self, ctx: PluginContext):
        async def typing(client: Client, event: dict[str, Any]) -> None:
            check_fields(event, TYPING_FIELDS)
            chat_id = get_id(event, "chat")
            active = event.get("typing")
            active = True if active is None else active  # absent or null: typing
            if not isinstance(active, bool):
                raise ChatError("bad_request", "'typing' must be true or false")
            chat = await ctx.chat(chat_id)
            if chat is None or client.user_id not in chat.member_ids:
                raise ChatError("not_member")
            key = (client.user_id, chat_id)
            now = trio.current_time()
            if active and now - self._typing_sent.get(key, -1e9) < self.settings.typing_interval:
                return  # coalesced: the members were told moments ago
            if active:
                self._typing_sent[key] = now
            else:
                self._typing_sent.pop(key, None)
            forward = {
                "type": "typing", "chat": str(chat_id), "user": str(client.user_id), "typing": active,
                "expires_in": int(self.settings.typing_ttl * 1000) if active else 0,
            }
            to = [uid for uid in chat.member_ids
                  if uid != client.user_id and not await ctx.blocked(uid, client.user_id)]
            ctx.send_to_users(to, forward)
            if len(self._typing_sent) > 100_000:
                self._typing_sent.clear()
            ctx.notify("on_typing", chat_id=chat_id, user_id=client.user_id, typing=active)

        return {"typing": typing}
