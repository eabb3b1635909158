"""The REST API (quart-trio): accounts, users, chats and history. See docs/protocol.md."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import re
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, overload

import orjson
import trio
from quart import Response, request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody, TrioRequest
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.routing import BaseConverter

from ..core.accounts import Device, public_user
from ..core.annotate import annotate
from ..core.errors import ChatError, bad_request
from ..core.former import left_at, left_seq, members_at, role_at
from ..core.groups import AddMembers, CreateGroup, Leave, RemoveMember, SetRole, UpdateChat, check_title, check_ttl
from ..core.operations import OpenDirect, SetHidden
from ..core.profiles import add_photos, default_visibility, user_for
from ..core.search import history_around
from ..core.snowflake import parse_id
from ..core.views import add_status, chat_list, chat_summary, reads_visible
from ..plugin_api import Route
from ..storage import StorageError
from .openapi import document as openapi_document
from .plugin_routes import mount

if TYPE_CHECKING:
    from ..app import Node
    from ..observe import Metrics

log = logging.getLogger(__name__)

MAX_JSON_BODY = 64 * 1024  # every route's body limit unless it declares a larger one
DRAIN_LIMIT = 1024 * 1024  # unread request bodies up to this size are read and dropped

#: User settings and what each accepts (the receipts and last-seen plugins read them).
USER_SETTINGS = {
    "read_receipts": lambda v: isinstance(v, bool),
    "last_seen": lambda v: v in ("everyone", "contacts", "nobody"),
}


#: The ASGI scope key where a request's route rule is noted (for the request-time histogram).
ROUTE_KEY = "chatnode.route"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def observe_request(metrics: Metrics, scope: Mapping[str, Any], _status: int | None, seconds: float) -> None:
    """`RequestLog`'s hook: the request's time under its method and route rule (not its
    path: ids would make a histogram per chat). Unmatched paths count as one route."""
    method = scope.get("method", "")
    metrics.http.labels(method if method in METHODS else "other", scope.get(ROUTE_KEY, "unmatched")).observe(seconds)


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status=status, mimetype="application/json")


def error_response(exc: ChatError) -> Response:
    response = json_response({"error": exc.to_json()}, exc.status)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return response


async def json_body(fields: Collection[str] | None = None) -> dict[str, Any]:
    """The request's JSON object, read with a cap and a deadline: the size is checked
    against Content-Length before anything is read and against what arrived after every
    chunk, so a huge or endless body costs at most MAX_JSON_BODY bytes of memory, and a
    body that trickles in is cut off after `http.body_timeout` seconds (408). With
    `fields`, a body with any other field is refused (a misspelt field is an error, not
    a field silently left out)."""
    too_large = ChatError("too_large", f"JSON bodies are limited to {MAX_JSON_BODY} bytes")
    if (request.content_length or 0) > MAX_JSON_BODY:
        raise too_large
    raw = bytearray()
    with trio.move_on_after(request.body_timeout or 10.0) as deadline:
        try:
            async for chunk in request.body:
                raw += chunk
                if len(raw) > MAX_JSON_BODY:
                    raise too_large
        except RequestEntityTooLarge:
            raise too_large from None
    if deadline.cancelled_caught:
        raise ChatError("timeout", "the request body did not arrive in time")
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ChatError("invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    if fields is not None:
        check_body_fields(body, fields)
    return body


def check_body_fields(body: dict[str, Any], fields: Collection[str]) -> None:
    """Refuse a body field the request does not take, naming those it does."""
    unknown = body.keys() - set(fields)
    if unknown:
        raise bad_request(f"unknown field(s) in the body: {', '.join(sorted(unknown))}; "
                          f"it takes {', '.join(sorted(fields))}")


def path_id(value: str) -> int:
    try:
        return parse_id(value)
    except ValueError:
        raise ChatError("not_found") from None


@overload
def query_int(name: str, default: int, lo: int, hi: int) -> int: ...
@overload
def query_int(name: str, default: None, lo: int, hi: int) -> int | None: ...
def query_int(name: str, default: int | None, lo: int, hi: int) -> int | None:
    """A query parameter in [lo, hi], or `default` when it is absent."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not lo <= int(raw) <= hi:
        raise bad_request(f"'{name}' must be an integer between {lo} and {hi}")
    return int(raw)


def query_flag(name: str) -> bool:
    """A yes/no query parameter: ``1`` yes, ``0`` or absent no; anything else is refused."""
    raw = request.args.get(name)
    if raw is None or raw == "0":
        return False
    if raw == "1":
        return True
    raise bad_request(f"'{name}' must be 1 or 0")


def client_address() -> str:
    return request.remote_addr or "unknown"


async def current_device(node: Node) -> Device:
    """The device of the request's bearer token, or ChatError `unauthorized`."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    device = await node.accounts.authenticate(token.strip()) if scheme.lower() == "bearer" else None
    if device is None:
        raise ChatError("unauthorized")
    return device


async def user_ids_from(node: Node, body: dict[str, Any], field: str = "users") -> list[int]:
    """A list of users given by id (`users`) or by name (`usernames`)."""
    ids: list[int] = []
    raw_ids = body.get(field, [])
    names = body.get("usernames", [])
    if not isinstance(raw_ids, list) or not isinstance(names, list) or len(raw_ids) + len(names) > 10_000:
        raise bad_request(f"'{field}' and 'usernames' must be lists")
    for value in raw_ids:
        try:
            ids.append(parse_id(value))
        except ValueError:
            raise bad_request(f"{value!r} is not a user id") from None
    for name in names:
        user = await node.accounts.user_by_name(name) if isinstance(name, str) else None
        if user is None:
            raise ChatError("not_found", f"no user named {name!r}")
        ids.append(int(user["id"]))
    deleted = [uid for uid, user in (await node.accounts.load_users(ids)).items() if user.get("deleted")]
    if deleted:
        raise ChatError("not_found", f"user {deleted[0]} was deleted")
    return ids


def _rule_pattern(method: str, rule: str) -> re.Pattern[str]:
    """A route rule such as ``/api/media/<media_id>`` as a regex over ``METHOD path``."""
    parts = re.split(r"<[^>]+>", rule)
    return re.compile(re.escape(method.upper() + " ") + "[^/]+".join(map(re.escape, parts)) + "$")


STREAM_BUFFER = 1024 * 1024  # bytes of a streamed request body held before reading the connection pauses


class BoundedBody(TrioBody):
    """quart's request body, with backpressure once a handler streams it (`async for`):
    quart appends every chunk that arrives, however fast, so an upload read slower than
    the client sends it (into an object store, say) piled up in memory. Once streaming,
    the connection's reader waits (`wait_for_room`) while STREAM_BUFFER bytes are
    unread, and hypercorn stops reading the socket. A body awaited whole is not limited
    here (max_content_length bounds it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._streaming = False
        self._room = trio.Event()

    def __aiter__(self) -> BoundedBody:
        self._streaming = True
        return self

    async def __anext__(self) -> bytes:
        data = await super().__anext__()
        self._room.set()
        return data

    async def wait_for_room(self) -> None:
        while self._streaming and len(self._data) >= STREAM_BUFFER and self._must_raise is None:
            self._room = trio.Event()
            await self._room.wait()


class BoundedBodyConnection(TrioASGIHTTPConnection):
    """Feeds a request's body to it no faster than a streaming handler reads it."""

    async def handle_messages(self, nursery: trio.Nursery, request: Any, receive: Any) -> None:  # type: ignore[override]
        body = request.body
        while True:
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
                elif isinstance(body, BoundedBody):
                    await body.wait_for_room()
            elif message["type"] == "http.disconnect":
                break
        nursery.cancel_scope.cancel()


def request_class(body_limits: list[tuple[re.Pattern[str], int]]) -> type[TrioRequest]:
    """quart's request class with a body limit chosen per route *before* any of the body is
    buffered: quart fixes a request's limit when it creates it (from Content-Length, and
    again as data arrives), so the limit must be known from the method and path alone.
    Routes that declare no larger limit get MAX_CONTENT_LENGTH."""

    class NodeRequest(TrioRequest):
        body_class = BoundedBody

        def __init__(self, method: str, scheme: str, path: str, *args: Any, **kwargs: Any) -> None:
            target = f"{method.upper()} {path}"
            for pattern, limit in body_limits:
                if pattern.match(target):
                    kwargs["max_content_length"] = limit
                    break
            super().__init__(method, scheme, path, *args, **kwargs)

    return NodeRequest


class IdConverter(BaseConverter):
    """``<id:name>``: a path segment of digits. For rules that would otherwise also match a
    fixed path beside them (``/api/chats/<id:chat_id>`` and ``/api/chats/direct``), so the
    methods a path takes (405's and OPTIONS' ``Allow``) are its own."""

    regex = "[0-9]+"


CONVERTER = re.compile(r"<id:")  # the id converter, left out of route labels


def create_app(node: Node, plugin_routes: Sequence[Route] = ()) -> QuartTrio:
    app = QuartTrio("chatnode", static_folder=None)
    app.url_map.converters["id"] = IdConverter
    app.config["MAX_CONTENT_LENGTH"] = MAX_JSON_BODY  # routes that take more declare it
    app.config["BODY_TIMEOUT"] = node.config.http.body_timeout
    body_limits = [(_rule_pattern(r.method, r.path), r.max_body) for r in plugin_routes if r.max_body]
    app.request_class = request_class(body_limits)
    app.asgi_http_class = BoundedBodyConnection
    accounts, chats = node.accounts, node.chats
    limits = node.config.limits

    async def current_device() -> Device:
        return await _current_device(node)

    def require_admin() -> None:
        """Admin endpoints: the configured admin token, or (with none set) loopback only."""
        token = node.config.admin.token
        if token:
            header = request.headers.get("Authorization", "")
            if not hmac.compare_digest(header.encode(), f"Bearer {token}".encode()):
                raise ChatError("unauthorized")
        elif not _is_loopback(client_address()):
            raise ChatError("forbidden", "admin endpoints are for loopback clients unless admin.token is set")

    @app.after_request
    async def finish_request_body(response: Response) -> Response:
        """Read what is left of a request body the route did not need (say, a 401 before a
        big POST was read). Left unread, the server stops reading the socket, the client
        never finishes sending, and neither side sees the answer. Bodies larger than
        DRAIN_LIMIT are not read: the connection is closed after the answer instead."""
        done = getattr(request.body, "_complete", None)  # quart keeps no public flag for this
        if response.status_code in (408, 413) or getattr(request.body, "_must_raise", None) is not None:
            response.headers["Connection"] = "close"  # too slow or too big: never wait for the rest
            return response
        if done is not None and done.is_set():
            return response
        length = request.content_length or 0
        if length > DRAIN_LIMIT or (length == 0 and request.headers.get("Transfer-Encoding")):
            response.headers["Connection"] = "close"
        elif length:
            with trio.move_on_after(10):
                try:
                    async for _ in request.body:
                        pass
                except RequestEntityTooLarge:
                    response.headers["Connection"] = "close"
        return response

    @app.before_request
    async def note_route() -> None:
        """The matched route rule, for the request-time histogram (`observe_request`)."""
        if request.url_rule is not None:
            # ASGI lets middleware add scope keys; hypercorn's scope TypedDicts leave no room
            request.scope[ROUTE_KEY] = CONVERTER.sub("<", request.url_rule.rule)  # type: ignore[literal-required]

    def counted(exc: ChatError) -> Response:
        node.metrics.errors.inc(exc.code, "http")
        return error_response(exc)

    @app.errorhandler(ChatError)
    async def on_chat_error(exc: ChatError) -> Response:
        return counted(node.plugins.client_error(exc))

    @app.errorhandler(HTTPException)
    async def on_http_error(exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "bad_request", 413: "too_large"}.get(exc.code or 500, "bad_request")
        message = exc.description
        if exc.code == 413:
            limit = getattr(request.body, "_max_content_length", None)
            message = f"request bodies on this route are limited to {limit} bytes"
        response = counted(ChatError(code, message, status=exc.code))
        allow = dict(exc.get_headers()).get("Allow")
        if allow:  # 405: which methods the path takes (RFC 9110)
            response.headers["Allow"] = allow
        return response

    @app.errorhandler(StorageError)
    async def on_storage_error(exc: StorageError) -> Response:
        """Storage failed under the request (a database away, a commit whose outcome is
        unknown): nothing was acknowledged, and the same request again settles it."""
        log.warning("request %s %s: storage failed: %s", request.method, request.path, exc)
        return counted(ChatError("unavailable", "storage is unavailable; retry"))

    @app.errorhandler(Exception)
    async def on_crash(exc: Exception) -> Response:
        log.exception("request %s %s failed", request.method, request.path)
        return counted(ChatError("internal"))

    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response({"ok": True, "node": node.config.node.name, **node.hub.statistics()})

    @app.get("/api/info")
    async def info() -> Response:
        return json_response(
            {
                "name": node.config.node.name,
                "node_id": node.config.node.id,
                "version": node.version,
                "ws_url": node.ws_url_for(request.host, request.scheme),
                "registration_open": node.config.accounts.registration_open,
                "min_password_length": node.config.accounts.min_password_length,
                "limits": {
                    "max_message_bytes": limits.max_message_bytes,
                    "max_frame_bytes": limits.max_frame_bytes,
                    "max_events_per_frame": limits.max_events_per_frame,
                    "max_group_members": limits.max_group_members,
                },
                # every node a client may use (this one first): in a cluster, the live members
                "nodes": node.node_urls(),
            }
        )

    @app.get("/api/openapi.json")
    async def openapi() -> Response:
        """The HTTP API as OpenAPI 3.1 (node/web/openapi.py): what this node serves."""
        return json_response(openapi_document(app, node.version))

    # -- accounts ------------------------------------------------------------------

    @app.post("/api/register")
    async def register() -> Response:
        body = await json_body(("username", "password", "display_name"))

        async def gate(username: str, display_name: str) -> None:
            await node.plugins.gate("check_registration", username=username, display_name=display_name,
                                    address=client_address())

        user = await accounts.register(body.get("username"), body.get("password"), body.get("display_name"),
                                       gate=gate)
        return json_response({"user": user}, 201)

    @app.post("/api/login")
    async def login() -> Response:
        body = await json_body(("username", "password", "device"))
        result = await accounts.login(body.get("username"), body.get("password"), client_address(), body.get("device"))
        return json_response(result)

    @app.post("/api/logout")
    async def logout() -> Response:
        await accounts.logout(await current_device())
        return Response(b"", status=204)

    @app.get("/api/me")
    async def me() -> Response:
        device = await current_device()
        user = await accounts.user(device.user_id)
        if user is None:
            raise ChatError("unauthorized")
        settings = {"last_seen": default_visibility(node), **user.get("settings", {})}  # what applies when unset
        photo = {"photo": user["photo"]} if user.get("photo") else {}
        return json_response({"user": {**public_user(user), **photo}, "device_id": str(device.device_id),
                              "settings": settings})

    @app.patch("/api/me/settings")
    async def update_settings() -> Response:
        device = await current_device()
        body = await json_body()
        changes = {}
        for key, value in body.items():
            check = USER_SETTINGS.get(key)
            if check is None:
                raise bad_request(f"unknown setting {key!r}; settings are {', '.join(sorted(USER_SETTINGS))}")
            if not check(value):
                raise bad_request(f"invalid value for {key!r}")
            changes[key] = value
        settings = await accounts.update_settings(device.user_id, changes)
        return json_response({"settings": {"last_seen": default_visibility(node), **settings}})  # as GET /api/me

    @app.patch("/api/me")
    async def update_me() -> Response:
        device = await current_device()
        body = await json_body()
        if set(body) != {"display_name"}:
            raise bad_request("give 'display_name' (and nothing else)")
        user = await accounts.rename(device.user_id, body["display_name"])
        await node.announce_user(device.user_id, user)
        return json_response({"user": user})

    @app.post("/api/me/password")
    async def change_password() -> Response:
        device = await current_device()
        body = await json_body(("current_password", "new_password"))
        revoked = await accounts.change_password(
            device, body.get("current_password"), body.get("new_password"), client_address()
        )
        return json_response({"revoked": revoked})

    @app.get("/api/me/devices")
    async def list_devices() -> Response:
        return json_response({"devices": await accounts.devices(await current_device())})

    @app.delete("/api/me/devices/<device_id>")
    async def revoke_device(device_id: str) -> Response:
        await accounts.revoke_device(await current_device(), path_id(device_id))
        return Response(b"", status=204)

    # -- users ---------------------------------------------------------------------

    @app.get("/api/users")
    async def search_users() -> Response:
        device = await current_device()
        prefix = request.args.get("prefix", "")
        if len(prefix) > 32:
            raise bad_request("'prefix' is at most 32 characters")
        limit = query_int("limit", 20, 1, 100)
        found = await accounts.search(prefix, limit, exclude=device.user_id)
        await add_photos(node, device.user_id, found)
        return json_response({"users": found})

    @app.get("/api/users/<user_id>")
    async def get_user(user_id: str) -> Response:
        device = await current_device()
        user = await accounts.user(path_id(user_id))
        if user is None:
            raise ChatError("not_found")
        return json_response({"user": await user_for(node, device.user_id, user)})

    # -- chats ---------------------------------------------------------------------

    @app.post("/api/chats/direct")
    async def open_direct() -> Response:
        device = await current_device()
        body = await json_body(("user_id", "username"))
        if len(body) != 1:
            raise bad_request("give 'user_id' or 'username' (one of them)")
        if "user_id" in body:
            try:
                peer = await accounts.user(parse_id(body["user_id"]))
            except ValueError:
                raise bad_request("'user_id' must be a user id") from None
        elif isinstance(body.get("username"), str):
            peer = await accounts.user_by_name(body["username"])
        else:
            raise bad_request("give 'user_id' or 'username'")
        if peer is None or peer.get("deleted"):
            raise ChatError("not_found", "no such user")
        chat = await chats.run(OpenDirect(user_id=device.user_id, peer_id=int(peer["id"])))
        return json_response({"chat": await chat_summary(node, device.user_id, chat)})

    @app.get("/api/chats")
    async def list_chats() -> Response:
        device = await current_device()
        include_hidden = query_flag("hidden")
        return json_response({"chats": await chat_list(node, device.user_id, include_hidden=include_hidden)})

    @app.get("/api/chats/<id:chat_id>")
    async def get_chat(chat_id: str) -> Response:
        device = await current_device()
        chat = await chats.load(path_id(chat_id))
        if chat is None or chat.visible_range(device.user_id) is None:
            raise ChatError("not_member")
        unread = await chats.unread_counts(device.user_id, [chat])
        return json_response({"chat": await chat_summary(node, device.user_id, chat, unread.get(chat.id, 0))})

    @app.get("/api/chats/<chat_id>/messages")
    async def history(chat_id: str) -> Response:
        device = await current_device()
        before = query_int("before", None, 1, (1 << 63) - 1)
        around = query_int("around", None, 1, (1 << 63) - 1)
        limit = query_int("limit", 50, 1, limits.history_page)
        if around is not None and before is not None:
            raise ChatError("bad_request", "'around' and 'before' are two kinds of page: give one of them")
        if around is not None:  # a message in its context (a search result, a starred message)
            page = await history_around(node, device.user_id, path_id(chat_id), around, limit)
        else:
            page = await chats.history(device.user_id, path_id(chat_id), before, limit)
        messages = page.pop("messages")
        chat = await chats.load(path_id(chat_id))
        if chat is not None:
            await add_status(node, device.user_id, chat, messages)
            await annotate(node, device.user_id, chat.id, messages,  # reactions, stars, deleted for me
                           until_ts=await left_at(node, chat, device.user_id))
        return json_response({"messages": messages, **page})

    @app.post("/api/chats/<chat_id>/hide")
    async def hide(chat_id: str) -> Response:
        device = await current_device()
        await chats.run(SetHidden(user_id=device.user_id, chat_id=path_id(chat_id), hidden=True))
        return Response(b"", status=204)

    @app.post("/api/chats/<chat_id>/unhide")
    async def unhide(chat_id: str) -> Response:
        device = await current_device()
        await chats.run(SetHidden(user_id=device.user_id, chat_id=path_id(chat_id), hidden=False))
        return Response(b"", status=204)

    # -- groups --------------------------------------------------------------------

    @app.post("/api/groups")
    async def create_group() -> Response:
        device = await current_device()
        body = await json_body(("title", "members", "usernames"))
        title = check_title(body.get("title"))
        members = await user_ids_from(node, body, "members")
        await node.plugins.gate("check_join", chat_id=0, user_ids=[device.user_id, *members], by=device.user_id)
        chat = await chats.run(CreateGroup(user_id=device.user_id, title=title, members=members))
        return json_response({"chat": await chat_summary(node, device.user_id, chat)}, 201)

    @app.patch("/api/chats/<id:chat_id>")
    async def update_chat(chat_id: str) -> Response:
        device = await current_device()
        body = await json_body()
        unknown = body.keys() - {"title", "ttl"}
        if unknown or not body:
            raise bad_request("give 'title' and/or 'ttl' (seconds, 0 = off)")
        title = check_title(body["title"]) if "title" in body else None
        ttl = check_ttl(body["ttl"]) if "ttl" in body else None
        chat = await chats.run(UpdateChat(user_id=device.user_id, chat_id=path_id(chat_id), title=title, ttl=ttl))
        return json_response({"chat": await chat_summary(node, device.user_id, chat)})

    @app.get("/api/chats/<chat_id>/members")
    async def members(chat_id: str) -> Response:
        device = await current_device()
        chat = await chats.load(path_id(chat_id))
        if chat is None or chat.visible_range(device.user_id) is None:
            raise ChatError("not_member")
        until = left_seq(chat, device.user_id)
        if until is None:
            listed = [(uid, chat.members[uid], chat.members[uid]["role"]) for uid in chat.active_ids()]
        else:  # a former member: the members of the moment they left, their cursors not told
            listed = [(uid, m, role_at(m, until)) for uid, m in members_at(chat, until)]
        out = []
        users = await accounts.load_users([device.user_id, *(uid for uid, _, _ in listed)])
        for uid, record, role in listed:
            user = users.get(uid)
            read = record["read"] if until is None and reads_visible(node, device.user_id, uid) else None
            out.append({"user": public_user(user) if user else {"id": str(uid)}, "role": role,
                        "joined": record["joined"], "delivered_seq": record["delivered"] if until is None else None,
                        "read_seq": read})  # read_seq null: hidden by read receipts
        out.sort(key=lambda m: (m["role"] != "admin", m["joined"]))
        await add_photos(node, device.user_id, [m["user"] for m in out])
        return json_response({"members": out})

    @app.post("/api/chats/<chat_id>/members")
    async def add_members(chat_id: str) -> Response:
        device = await current_device()
        users = await user_ids_from(node, await json_body(("users", "usernames")))
        if not users:
            raise bad_request("give 'users' (ids) or 'usernames'")
        await node.plugins.gate("check_join", chat_id=path_id(chat_id), user_ids=users, by=device.user_id)
        chat = await chats.run(AddMembers(user_id=device.user_id, chat_id=path_id(chat_id), users=users))
        return json_response({"chat": await chat_summary(node, device.user_id, chat)})

    @app.delete("/api/chats/<chat_id>/members/<user_id>")
    async def remove_member(chat_id: str, user_id: str) -> Response:
        device = await current_device()
        target = path_id(user_id)
        if target == device.user_id:
            await chats.run(Leave(user_id=device.user_id, chat_id=path_id(chat_id)))
        else:
            await chats.run(RemoveMember(user_id=device.user_id, chat_id=path_id(chat_id), target=target))
        return Response(b"", status=204)

    @app.post("/api/chats/<chat_id>/leave")
    async def leave(chat_id: str) -> Response:
        device = await current_device()
        await chats.run(Leave(user_id=device.user_id, chat_id=path_id(chat_id)))
        return Response(b"", status=204)

    @app.put("/api/chats/<chat_id>/admins/<user_id>")
    async def promote(chat_id: str, user_id: str) -> Response:
        device = await current_device()
        await chats.run(SetRole(user_id=device.user_id, chat_id=path_id(chat_id), target=path_id(user_id), role="admin"))
        return Response(b"", status=204)

    @app.delete("/api/chats/<chat_id>/admins/<user_id>")
    async def demote(chat_id: str, user_id: str) -> Response:
        device = await current_device()
        await chats.run(SetRole(user_id=device.user_id, chat_id=path_id(chat_id), target=path_id(user_id), role="member"))
        return Response(b"", status=204)

    # -- blocking --------------------------------------------------------------------

    @app.get("/api/blocks")
    async def list_blocks() -> Response:
        device = await current_device()
        blocked = sorted(await node.blocks.blocked_by(device.user_id))
        users = await accounts.load_users(blocked)
        return json_response({"users": [public_user(users[uid]) for uid in blocked if uid in users]})

    @app.put("/api/blocks/<user_id>")
    async def block(user_id: str) -> Response:
        device = await current_device()
        target = path_id(user_id)
        if target == device.user_id or await accounts.user(target) is None:
            raise ChatError("not_found", "no such user")
        await node.blocks.set(device.user_id, target, True)
        return Response(b"", status=204)

    @app.delete("/api/blocks/<user_id>")
    async def unblock(user_id: str) -> Response:
        device = await current_device()
        await node.blocks.set(device.user_id, path_id(user_id), False)
        return Response(b"", status=204)

    # -- chat management, reactions, stars, search, reports, photos (node/web/features.py) --
    from .features import add_feature_routes

    add_feature_routes(app, node, json_body=json_body, json_response=json_response, current_device=_current_device,
                       path_id=path_id, query_int=query_int, require_admin=require_admin)
    # -- end features --

    # -- web client (node/web/client.py owns what is inside this block) --------------
    from .client import add_web_client

    add_web_client(app, node)
    # -- end web client --

    # -- plugins ---------------------------------------------------------------------

    mount(app, node, list(plugin_routes), json_body=json_body, current_device=_current_device,
          client_address=client_address, require_admin=require_admin)

    # -- admin ---------------------------------------------------------------------

    @app.get("/api/admin/stats")
    async def admin_stats() -> Response:
        require_admin()
        return json_response(node.statistics())

    # -- accounts, devices, chats and the node, for admins (node/web/admin.py) --------
    from .admin import add_admin_routes

    add_admin_routes(app, node, json_body=json_body, json_response=json_response, path_id=path_id,
                     query_int=query_int, query_flag=query_flag, require_admin=require_admin)
    # -- end admin --

    @app.get("/metrics")
    async def metrics() -> Response:
        require_admin()
        from .metrics import CONTENT_TYPE, render

        return Response(render(node), status=200, content_type=CONTENT_TYPE)

    # -- cluster (node/cluster owns what is inside this block) ----------------------
    @app.get("/api/admin/cluster/members")
    async def admin_cluster_members() -> Response:
        require_admin()
        if node.cluster is None:
            return json_response({"enabled": False, "members": [], "statistics": {}})
        from ..cluster.status import DEFAULT_TIMEOUT, MAX_TIMEOUT, cluster_view

        timeout_ms = query_int("timeout_ms", int(DEFAULT_TIMEOUT * 1000), 1, int(MAX_TIMEOUT * 1000))
        expected = request.args.get("expected", "1") != "0"
        return json_response(await cluster_view(node, timeout=(timeout_ms or 1) / 1000, expected=expected))

    # -- end cluster --

    return app


_current_device = current_device


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
