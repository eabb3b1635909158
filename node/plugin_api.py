"""The API a plugin programs against: snapshots, its context, HTTP routes and errors.

A plugin imports only the ``node`` package (which re-exports what is here) and reaches
the running node through the `PluginContext` every hook receives as ``ctx``. What it
reads comes as frozen snapshots (`User`, `Chat`, `Member`, `Message`: ids as ints, never
the core's live objects), so a plugin can neither corrupt the core's state nor break
when the core is refactored. docs/plugins.md documents every name here.
"""

from __future__ import annotations

import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import orjson

from .core.errors import ERROR_CODES, ChatError
from .core.state import is_muted
from .plugin_store import PluginStore

if TYPE_CHECKING:
    from .app import Node

EMPTY: Mapping[str, Any] = types.MappingProxyType({})


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """A read-only copy, all the way down: a snapshot shares nothing the core may still
    hold (a chat's last message, say), and nothing in it can be changed."""
    if not mapping:
        return EMPTY
    copy = dict(mapping)
    if not _SCALARS.issuperset(map(type, copy.values())):  # (most records hold nothing nested)
        for key, value in copy.items():
            if type(value) not in _SCALARS:
                copy[key] = _frozen_value(value)
    return types.MappingProxyType(copy)


class _ReadOnlyDict(dict[str, Any]):
    """A mapping nested in a snapshot: read-only, and still a dict, so that a plugin can
    send ``dict(message.record)`` on as JSON."""

    __slots__ = ()

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a snapshot is read-only")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __reduce_ex__(self, protocol: Any) -> Any:  # copies and pickles are plain dicts
        return dict, (dict(self),)


#: What JSON holds besides objects and arrays: kept as they are (a snapshot of a message is
#: taken for every message stored, so the common case is kept cheap).
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _frozen_value(value: Any) -> Any:
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is list or kind is tuple:
        return tuple([_frozen_value(v) for v in value])
    if isinstance(value, Mapping):
        return _ReadOnlyDict({k: v if type(v) in _SCALARS else _frozen_value(v) for k, v in value.items()})
    return value


def read_only(content: Mapping[str, Any]) -> Mapping[str, Any]:
    """What a gate sees of a message's content: a read-only view (its lists as tuples), so
    that a gate cannot change what is stored behind the other gates' backs; only
    ``prepare_message``'s return value replaces it. Content of scalars alone (the common
    case) is viewed without a copy; anything nested is copied read-only."""
    if _SCALARS.issuperset(map(type, content.values())):
        return types.MappingProxyType(content)
    return _frozen(content)


# -- snapshots ----------------------------------------------------------------------------


@attrs.frozen
class User:
    """A user account as plugins see it (no password hash)."""

    id: int
    username: str
    display_name: str
    created: int  # Unix ms
    settings: Mapping[str, Any] = EMPTY  # e.g. read_receipts, last_seen
    service: bool = False  # an account for a bot or integration: no one can log in as it
    photo: str | None = None  # the media id of the profile photo

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> User:
        return cls(int(record["id"]), record["username"], record.get("display_name") or record["username"],
                   record.get("created", 0), _frozen(record.get("settings")), bool(record.get("service")),
                   record.get("photo"))


@attrs.frozen
class Member:
    """One member of a chat, current or former (`until_seq` set once they left)."""

    user_id: int
    role: str  # "admin" or "member"
    from_seq: int  # the first entry of the chat's log they may see
    until_seq: int | None  # the last one, once they left or were removed
    delivered: int  # everything up to this seq reached one of their devices
    read: int  # ... and up to this one was read
    joined: int  # Unix ms
    muted: bool = False  # the member muted the chat (when the snapshot was taken)

    @property
    def current(self) -> bool:
        return self.until_seq is None

    @classmethod
    def from_record(cls, user_id: int, record: Mapping[str, Any]) -> Member:
        return cls(user_id, record["role"], record["from_seq"], record.get("until_seq"), record["delivered"],
                   record["read"], record.get("joined", 0), is_muted(record, time.time_ns() // 1_000_000))


@attrs.frozen
class Chat:
    """A chat: 1-1 (``direct``) or ``group``."""

    id: int
    kind: str
    title: str  # groups only ("" for 1-1 chats)
    created: int
    created_by: int
    ttl: int  # seconds before new messages disappear; 0: never
    last_seq: int  # the newest entry of the log that is stored
    member_ids: frozenset[int]  # current members
    delivered_floor: int  # every current member has every entry up to this seq
    read_floor: int  # ... and has read up to this one
    photo: str | None = None  # a group's photo (a media id)


@attrs.frozen
class Message:
    """A log entry: a message, an edit or deletion marker, or a system entry (sender 0)."""

    id: int
    chat_id: int
    seq: int
    sender: int  # 0: the node itself (group changes)
    ts: int  # Unix ms
    kind: str  # text, image, audio, video, file, edit, delete, deleted, system
    text: str | None = None
    media: Mapping[str, Any] | None = None
    reply_to: int | None = None
    expires_at: int | None = None
    record: Mapping[str, Any] = EMPTY  # every field, exactly as clients receive it

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Message:
        reply_to = record.get("reply_to")
        frozen = _frozen(record)
        media = frozen.get("media")  # (frozen with the record: one copy)
        return cls(
            int(record["id"]), int(record["chat"]), record["seq"], int(record.get("from") or 0), record["ts"],
            record["kind"], record.get("text"), media if isinstance(media, Mapping) else None,
            int(reply_to) if reply_to else None, record.get("expires_at"), frozen,
        )

    @classmethod
    def from_raw(cls, raw: bytes) -> Message:
        return cls.from_record(orjson.loads(raw))


# -- errors ------------------------------------------------------------------------------


class Reject(Exception):
    """Raised by a gate to refuse what it checks: the client gets ``rejected`` with this
    message, and nothing is stored."""

    def __init__(self, message: str = "a plugin rejected the message") -> None:
        super().__init__(message)
        self.message = message


class PluginError(ChatError):
    """An error with a code of the plugin's own (declared in ``register_error_codes``) or
    one of the core's documented codes. It reaches the client as that code, over HTTP
    and on the chat socket; an undeclared code is logged and answered as ``internal``."""

    def __init__(self, code: str, message: str | None = None, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        Exception.__init__(self, f"{code}: {message or code}")
        core = ERROR_CODES.get(code)
        self.code = code
        self.message = message or (core[1] if core else "")
        self.status = status or (core[0] if core else 0)  # 0: the declared status (the node fills it in)
        self.retry_after = retry_after

    def declared(self, codes: Mapping[str, tuple[int, str]]) -> PluginError:
        """Fill in the status and meaning a plugin declared for this code."""
        status, meaning = codes.get(self.code, (400, self.code))
        self.status = self.status or status
        self.message = self.message or meaning
        return self


# -- HTTP --------------------------------------------------------------------------------


class Request(Protocol):
    """An HTTP request as a plugin's route handler sees it."""

    method: str
    path: str
    args: Mapping[str, str]  # the query string (first value of each name)
    headers: Mapping[str, str]  # case-insensitive
    content_length: int | None
    remote_addr: str  # the client's address (a trusted proxy's X-Forwarded-For applied)

    async def json(self, fields: Collection[str] | None = None) -> dict[str, Any]:
        """The body as a JSON object (bounded in size and time; see docs/protocol.md); with
        `fields`, a body with any other field is refused with ``bad_request``."""
        ...

    def body(self) -> AsyncIterator[bytes]:
        """The body chunk by chunk, as it arrives (for uploads)."""
        ...

    async def user_id(self) -> int:
        """The user of the request's bearer token; raises ``unauthorized`` without one."""
        ...

    async def device_id(self) -> int:
        """The device (token) of the request; raises ``unauthorized`` without one."""
        ...


@attrs.define
class Response:
    """What a route handler returns: bytes or an async iterator of them (streamed)."""

    body: bytes | AsyncIterator[bytes] = b""
    status: int = 200
    headers: dict[str, str] = attrs.Factory(dict)
    content_type: str = "application/json"


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status)


@attrs.frozen
class Route:
    """An HTTP route of a plugin.

    ``path`` uses ``<name>`` placeholders (``/api/things/<thing_id>``), passed to the
    handler as keyword arguments: ``await handler(request, thing_id=...)``. With
    ``admin``, only requests with the admin token get through (like /api/admin/...).
    ``max_body`` raises this route's request-body limit above the 64 KiB default.
    """

    method: str
    path: str
    handler: Callable[..., Awaitable[Response | dict[str, Any]]]
    admin: bool = False
    max_body: int | None = None


# -- the chat socket ----------------------------------------------------------------------


class Client(Protocol):
    """The connected device a plugin's WebSocket event handler is serving."""

    user_id: int

    @property
    def device_id(self) -> int: ...

    def send(self, event: dict[str, Any]) -> None:
        """Queue an event to this device (never waits)."""
        ...


#: A handler of a client event type: ``async def handler(client, event)``. Raise
#: `PluginError` (or `ChatError`) to answer with an ``error`` event.
FrameHandler = Callable[[Client, dict[str, Any]], Awaitable[None]]


# -- the context ---------------------------------------------------------------------------


class PluginContext:
    """What one plugin may do with the node (handed to every hook as ``ctx``).

    Reads return snapshots; writes go through the same paths as the core's own (the
    sequencer, the group commit), so a plugin cannot break an invariant.
    """

    def __init__(self, node: Node, name: str, settings: Any) -> None:
        self._node = node
        self.name = name
        self.settings = settings  # the structured [plugins.<name>] section, or None
        self._store: PluginStore | None = None
        self._counters: dict[str, float] = {}
        self._stat_sources: list[Callable[[], Mapping[str, Any]]] = []

    @property
    def store(self) -> PluginStore:
        """The plugin's own durable tables (its name must be a valid namespace)."""
        if self._store is None:
            self._store = PluginStore(self._node.storage, self.name)
        return self._store

    # -- the node ------------------------------------------------------------------

    @property
    def node_name(self) -> str:
        return self._node.config.node.name

    @property
    def node_id(self) -> int:
        return self._node.config.node.id

    @property
    def version(self) -> str:
        return self._node.version

    @property
    def public_url(self) -> str:
        """``http.public_url`` as configured (the URL users reach the node at behind a
        proxy), or "" when it is not set."""
        return self._node.config.http.public_url

    @property
    def data_dir(self) -> Path:
        """The node's data directory (keep files of your own in a folder named after you)."""
        return self._node.config.data_dir

    def next_id(self) -> int:
        """A new Snowflake id, unique in the cluster."""
        return self._node.ids.next_id()

    async def is_online(self, user_id: int) -> bool:
        """Whether the user has a device connected, to any node of the cluster."""
        return await self._node.is_online(user_id)

    # -- reads ---------------------------------------------------------------------

    async def user(self, user_id: int) -> User | None:
        record = await self._node.accounts.user(user_id)
        return User.from_record(record) if record else None

    async def users(self, user_ids: Iterable[int]) -> dict[int, User]:
        records = await self._node.accounts.load_users(user_ids)
        return {uid: User.from_record(r) for uid, r in records.items()}

    async def user_by_name(self, username: str) -> User | None:
        record = await self._node.accounts.user_by_name(username)
        return User.from_record(record) if record else None

    async def chat(self, chat_id: int) -> Chat | None:
        chat = await self._node.chats.load(chat_id)
        return self._node.chat_snapshot(chat) if chat is not None else None

    async def member(self, chat_id: int, user_id: int) -> Member | None:
        """A current or former member's record, or None."""
        chat = await self._node.chats.load(chat_id)
        record = chat.members.get(user_id) if chat is not None else None
        return Member.from_record(user_id, record) if record is not None else None

    async def members(self, chat_id: int, *, former: bool = False) -> list[Member]:
        chat = await self._node.chats.load(chat_id)
        if chat is None:
            return []
        return [Member.from_record(uid, r) for uid, r in chat.members.items()
                if former or r.get("until_seq") is None]

    async def messages(self, chat_id: int, first: int, last: int, limit: int = 200) -> list[Message]:
        """Stored entries with first <= seq <= last, oldest first (purged ones are absent)."""
        rows = await self._node.chats.read_range(chat_id, first, last, limit)
        return [Message.from_raw(raw) for _, raw in rows]

    async def authors_between(self, chat_id: int, after: int, upto: int, *, exclude: int = 0) -> set[int]:
        """Who sent the recent entries with after < seq <= upto (other than `exclude`)."""
        chat = await self._node.chats.load(chat_id)
        return self._node.chats.authors_between(chat, exclude, after, upto) if chat is not None else set()

    async def contacts_of(self, user_id: int, *, max_group: int | None = None) -> set[int]:
        """Everyone who currently shares a chat with the user (through 1-1 chats and, if
        `max_group` is given, groups of at most that many members)."""
        return await self._node.chats.contacts_of(user_id, max_group)

    async def shares_chat(self, a: int, b: int) -> bool:
        return await self._node.chats.shares_chat(a, b)

    async def is_contact(self, owner: int, viewer: int) -> bool:
        """Whether `owner` counts `viewer` as a contact (for last seen, presence and the
        profile photo under the ``contacts`` setting): `owner` has written to `viewer`, a
        message in their 1-1 chat. Sharing a group, or a chat `viewer` opened, is not enough."""
        return await self._node.chats.is_contact(owner, viewer)

    async def blocked(self, a: int, b: int) -> bool:
        """Whether either of the two users blocks the other."""
        return await self._node.blocks.either_loaded(a, b)

    async def photo_visible(self, viewer: int, owner: int) -> bool:
        """Whether `viewer` may see `owner`'s profile photo (the owner's last-seen setting:
        everyone, contacts or nobody; never where either blocks the other)."""
        from .core.profiles import photo_visible

        return await photo_visible(self._node, viewer, owner)

    async def reads_shared(self, user_id: int) -> bool:
        """Whether the user shares read receipts (their ``read_receipts`` setting)."""
        return await self._node.reads_shared(user_id)

    # -- actions -------------------------------------------------------------------

    async def post_message(self, user_id: int, chat_id: int, content: dict[str, Any]) -> Message:
        """Store a message from `user_id` (a current member) and deliver it. It passes the
        same gates as a client's send (``check_message``, ``prepare_message``)."""
        return Message.from_record(await self._node.post_message(user_id, chat_id, content))

    async def mark_read(self, user_id: int, chat_id: int, seq: int) -> int:
        """Advance the user's read cursor in a chat; returns the cursor."""
        return await self._node.mark_read(user_id, chat_id, seq)

    async def create_service_user(self, username: str, display_name: str | None = None) -> User:
        """Get or create an account for a bot (no password: no one can log in as it)."""
        record = await self._node.accounts.create_service_user(username, display_name)
        return User.from_record(await self._node.accounts.user(int(record["id"])) or record)

    def send_to_user(self, user_id: int, event: dict[str, Any]) -> None:
        """An ephemeral event (never stored) to every connected device of a user."""
        self._node.send_to_user(user_id, event)

    def send_to_users(self, user_ids: Iterable[int], event: dict[str, Any]) -> None:
        """The same event to every connected device of several users (encoded once)."""
        payload = orjson.dumps(event)
        for user_id in user_ids:
            self._node.send_to_user(user_id, payload)

    async def check_upload(self, user_id: int, mime: str, size: int, name: str | None) -> None:
        """Run the ``check_upload`` gate (every plugin's) for an upload about to be stored;
        raises what a gate raised. For plugins that take uploads."""
        await self._node.plugins.gate("check_upload", user_id=user_id, mime=mime, size=size, name=name)

    # -- the plugin's own hooks ----------------------------------------------------

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Fire a notification hook this plugin declared (``register_hookspecs``)."""
        self._node.plugins.notify_own(self.name, hook, kwargs)

    def collect(self, hook: str, **kwargs: Any) -> list[Any]:
        """Call a collector hook this plugin declared; every plugin's non-None result."""
        return self._node.plugins.collect_own(self.name, hook, kwargs)

    # -- statistics ----------------------------------------------------------------

    def count(self, name: str, n: float = 1) -> None:
        """Add to a counter shown in /api/admin/stats and /metrics (``plugins.<plugin>.<name>``)."""
        self._counters[name] = self._counters.get(name, 0) + n

    def add_statistics(self, source: Callable[[], Mapping[str, Any]]) -> None:
        """Numbers computed when statistics are asked for (``source()`` must not block)."""
        self._stat_sources.append(source)

    def statistics(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self._counters)
        for source in self._stat_sources:
            out.update(source())
        return out


__all__ = [
    "Chat", "Client", "FrameHandler", "Member", "Message", "PluginContext", "PluginError", "Reject", "Request",
    "Response", "Route", "User", "json_response",
]
