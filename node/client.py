"""A small async client for chatnode (trio): REST via httpx, chat via trio-websocket.

Used by the tests, the benchmarks and bot authors::

    import trio
    from node.client import ChatClient

    async def main():
        async with ChatClient("http://127.0.0.1:8080") as alice:
            await alice.login("alice", "correct horse")
            chat = await alice.open_direct(username="bob")
            async with alice.connect() as conn:
                ack = await conn.send_text(chat["id"], "hello bob")
                print("stored as", ack["id"], "seq", ack["seq"])
                async for event in conn.events():
                    if event["type"] == "message":
                        print(event["from"], event["text"])

    trio.run(main)

The connection keeps a cursor per chat (the highest seq it has seen with no gap below),
acknowledges receipt cumulatively after every frame, and sends the cursors again when it
reconnects, so the server replays exactly what was missed.

A client may know several nodes of a cluster (``ChatClient([url1, url2])``; it also
learns the live members from ``GET /api/info``). A request that cannot reach a node is
tried on the next (a POST or PATCH only if it never reached the first: those are not safe
to repeat); ``connect(reconnect=True)`` keeps a chat socket up across node
failures: it reconnects (to the next node, with backoff), presents its cursors, and sends
again whatever was not acknowledged, with the same ``client_msg_id``, so nothing is lost
or stored twice.
"""

from __future__ import annotations

import itertools
import math
import random
import secrets
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, connect_websocket_url

#: Close codes after which a reconnecting connection tries again (elsewhere): the node
#: went away or cut this device off for being slow. Not after logout or a refused token.
RECONNECT_CODES = frozenset({1001, 1006, 1011, 1012, 1013, 4008})
BACKOFF_MIN = 0.05
BACKOFF_MAX = 5.0
#: Methods whose repetition changes nothing, so a call cut off mid-way may go to another node.
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class ClientError(Exception):
    """An error answer from the server (`code` is one of docs/protocol.md's codes)."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class ChatClient:
    """One user's client: REST calls plus `connect()` for the chat socket."""

    def __init__(self, base_url: str | Sequence[str], *, token: str | None = None, timeout: float = 30.0) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self.nodes = list(dict.fromkeys(u.rstrip("/") for u in urls))  # the current node first
        self.base_url = self.nodes[0]
        self.token = token
        self.user: dict[str, Any] | None = None
        self.cursors: dict[str, int] = {}  # chat id -> highest seq received with none missing below
        self._ahead: dict[str, set[int]] = {}  # chat id -> seqs received above a gap
        self._timeout = timeout
        self._clients: dict[str, httpx.AsyncClient] = {}  # node URL -> its HTTP client, kept until aclose
        self._ws_url: str | None = None

    @property
    def _http(self) -> httpx.AsyncClient:
        """The HTTP client of the current node. Each node keeps its own, so a request in
        flight on one is never cut by a move to another."""
        client = self._clients.get(self.base_url)
        if client is None:
            client = self._clients[self.base_url] = httpx.AsyncClient(base_url=self.base_url, timeout=self._timeout)
        return client

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    # -- REST ------------------------------------------------------------------------

    async def request(self, method: str, path: str, json: Any = None, **params: Any) -> Any:
        """A REST call; a node that cannot be reached is left for the next one known.

        A call that may have reached its node before the connection failed is repeated on
        another only if repeating it changes nothing (GET, PUT, DELETE): a POST or PATCH
        moves on only when the connection was never made, else the error is raised."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        for attempt in range(2 * len(self.nodes)):
            try:
                response = await self._http.request(
                    method, path, content=orjson.dumps(json) if json is not None else None, headers=headers,
                    params={k: v for k, v in params.items() if v is not None},
                )
                break
            except httpx.TransportError as exc:
                unsent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
                if attempt + 1 >= 2 * len(self.nodes) or not (unsent or method in IDEMPOTENT):
                    raise
                await self.next_node()
        self._raise_for(response)
        return response.json() if response.content else None

    def note_seq(self, chat: str, seq: int) -> bool:
        """Record that entry `seq` of a chat arrived (or was acked). The cursor moves only
        over what has arrived without a gap, so a resume never skips a missing entry; the
        first seq seen of a chat sets it (the server starts a device where it may see).
        Returns whether the cursor moved."""
        cursor = self.cursors.get(chat)
        if cursor is None:
            self.cursors[chat] = seq
            return True
        if seq <= cursor:
            return False
        ahead = self._ahead.setdefault(chat, set())
        ahead.add(seq)
        while cursor + 1 in ahead:
            cursor += 1
            ahead.discard(cursor)
        if not ahead:
            del self._ahead[chat]
        if cursor == self.cursors[chat]:
            return False
        self.cursors[chat] = cursor
        return True

    async def next_node(self) -> str:
        """Leave the current node for the next one known (after a short pause)."""
        await trio.sleep(random.uniform(0, BACKOFF_MIN))
        if len(self.nodes) > 1:
            self.nodes.append(self.nodes.pop(0))
            self.base_url = self.nodes[0]
        self._ws_url = None
        return self.base_url

    def learn_nodes(self, urls: Sequence[str]) -> None:
        """Add nodes a server listed (``GET /api/info``'s ``nodes``), keeping the current one first."""
        for url in urls:
            url = url.rstrip("/")
            if url not in self.nodes:
                self.nodes.append(url)

    async def info(self) -> dict[str, Any]:
        info = await self.request("GET", "/api/info")
        self.learn_nodes(info.get("nodes", ()))
        return info

    async def register(self, username: str, password: str, display_name: str | None = None) -> dict[str, Any]:
        body = {"username": username, "password": password}
        if display_name:
            body["display_name"] = display_name
        return (await self.request("POST", "/api/register", body))["user"]

    async def login(self, username: str, password: str, device: str = "python") -> dict[str, Any]:
        result = await self.request("POST", "/api/login", {"username": username, "password": password, "device": device})
        self.token = result["token"]
        self.user = result["user"]
        return result

    async def logout(self) -> None:
        await self.request("POST", "/api/logout")
        self.token = None

    async def me(self) -> dict[str, Any]:
        return await self.request("GET", "/api/me")

    async def search_users(self, prefix: str, limit: int = 20) -> list[dict[str, Any]]:
        return (await self.request("GET", "/api/users", prefix=prefix, limit=limit))["users"]

    async def open_direct(self, *, username: str | None = None, user_id: str | None = None) -> dict[str, Any]:
        body = {"username": username} if username else {"user_id": user_id}
        return (await self.request("POST", "/api/chats/direct", body))["chat"]

    async def chats(self, *, hidden: bool = False) -> list[dict[str, Any]]:
        return (await self.request("GET", "/api/chats", hidden="1" if hidden else None))["chats"]

    async def chat(self, chat_id: str) -> dict[str, Any]:
        return (await self.request("GET", f"/api/chats/{chat_id}"))["chat"]

    async def history(self, chat_id: str, *, before: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return (await self.request("GET", f"/api/chats/{chat_id}/messages", before=before, limit=limit))["messages"]

    async def whole_history(self, chat_id: str, *, page: int = 200) -> list[dict[str, Any]]:
        """Every message of the chat the user may see, oldest first (`history`, page by page)."""
        pages: list[list[dict[str, Any]]] = []
        before = None
        while True:
            found = await self.request("GET", f"/api/chats/{chat_id}/messages", before=before, limit=page)
            pages.append(found["messages"])
            if not found["has_more"]:  # (a page may be short: what you deleted or what expired is left out)
                return [m for older in reversed(pages) for m in older]
            before = found["next_before"]

    async def history_around(self, chat_id: str, seq: int, *, limit: int = 50) -> dict[str, Any]:
        """A message in its context: ``{"messages", "has_more", "has_newer", "next_before"}``."""
        return await self.request("GET", f"/api/chats/{chat_id}/messages", around=seq, limit=limit)

    async def search(self, query: str, *, chat: str | None = None, limit: int = 20,
                     before: str | None = None) -> dict[str, Any]:
        """Messages matching `query`, the newest first: ``{"results": [{"chat", "message"}],
        "next", "complete"}``; pass ``before=next`` for the next page."""
        return await self.request("GET", "/api/search", q=query, chat=chat, limit=limit, before=before)

    async def hide(self, chat_id: str) -> None:
        await self.request("POST", f"/api/chats/{chat_id}/hide")

    async def mark_read(self, chat_id: str, seq: int) -> int:
        return (await self.request("POST", f"/api/chats/{chat_id}/read", {"seq": seq}))["read_seq"]

    async def receipts(self, chat_id: str, seq: int) -> dict[str, list[str]]:
        return await self.request("GET", f"/api/chats/{chat_id}/messages/{seq}/receipts")

    # groups

    async def create_group(self, title: str, members: Sequence[str] = (), usernames: Sequence[str] = ()) -> dict[str, Any]:
        body = {"title": title, "members": list(members), "usernames": list(usernames)}
        return (await self.request("POST", "/api/groups", body))["chat"]

    async def update_chat(self, chat_id: str, **changes: Any) -> dict[str, Any]:
        return (await self.request("PATCH", f"/api/chats/{chat_id}", changes))["chat"]

    async def members(self, chat_id: str) -> list[dict[str, Any]]:
        return (await self.request("GET", f"/api/chats/{chat_id}/members"))["members"]

    async def add_members(self, chat_id: str, users: list[str]) -> dict[str, Any]:
        return (await self.request("POST", f"/api/chats/{chat_id}/members", {"users": users}))["chat"]

    async def remove_member(self, chat_id: str, user_id: str) -> None:
        await self.request("DELETE", f"/api/chats/{chat_id}/members/{user_id}")

    async def leave(self, chat_id: str) -> None:
        await self.request("POST", f"/api/chats/{chat_id}/leave")

    async def set_admin(self, chat_id: str, user_id: str, admin: bool = True) -> None:
        await self.request("PUT" if admin else "DELETE", f"/api/chats/{chat_id}/admins/{user_id}")

    # chat management (per user)

    async def set_prefs(self, chat_id: str, **changes: Any) -> dict[str, Any]:
        """Mute (``mute=3600`` seconds, ``True`` always, ``False`` off), archive, pin or
        mark as unread a chat for this user; returns the chat summary."""
        return (await self.request("PATCH", f"/api/chats/{chat_id}/prefs", changes))["chat"]

    async def clear_history(self, chat_id: str) -> dict[str, Any]:
        return (await self.request("POST", f"/api/chats/{chat_id}/clear"))["chat"]

    async def delete_chat(self, chat_id: str) -> None:
        """Delete a chat for this user: its history is cleared and it leaves the list."""
        await self.request("POST", f"/api/chats/{chat_id}/delete")

    async def report(self, *, user: str | None = None, chat: str | None = None, reason: str = "",
                     block: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"reason": reason, "block": block}
        if user is not None:
            body["user"] = user
        if chat is not None:
            body["chat"] = chat
        return (await self.request("POST", "/api/reports", body))["report"]

    async def admin_reports(self, *, before: str | None = None, limit: int = 50) -> dict[str, Any]:
        """Reports, newest first (admin: the admin token, or a loopback client without one)."""
        return await self.request("GET", "/api/admin/reports", before=before, limit=limit)

    async def dismiss_report(self, report_id: str) -> None:
        await self.request("DELETE", f"/api/admin/reports/{report_id}")

    # photos

    async def set_photo(self, media_id: str | None) -> dict[str, Any]:
        """Make an uploaded image your profile photo (None: remove it); returns your user."""
        if media_id is None:
            return (await self.request("DELETE", "/api/me/photo"))["user"]
        return (await self.request("PUT", "/api/me/photo", {"media": media_id}))["user"]

    async def set_group_photo(self, chat_id: str, media_id: str | None) -> dict[str, Any]:
        """Set a group's photo (admins; None: remove it); returns the chat."""
        if media_id is None:
            return (await self.request("DELETE", f"/api/chats/{chat_id}/photo"))["chat"]
        return (await self.request("PUT", f"/api/chats/{chat_id}/photo", {"media": media_id}))["chat"]

    async def user_info(self, user_id: str) -> dict[str, Any]:
        return (await self.request("GET", f"/api/users/{user_id}"))["user"]

    # reactions

    async def react(self, chat_id: str, seq: int, emoji: str) -> dict[str, Any]:
        """React to message `seq` with `emoji` (replacing an earlier reaction); returns the
        `reaction` event the members get."""
        path = f"/api/chats/{chat_id}/messages/{seq}/reaction"
        return (await self.request("PUT", path, {"emoji": emoji}))["reaction"]

    async def unreact(self, chat_id: str, seq: int) -> dict[str, Any]:
        return (await self.request("DELETE", f"/api/chats/{chat_id}/messages/{seq}/reaction"))["reaction"]

    async def reactions(self, chat_id: str, first: int | None = None, last: int | None = None) -> dict[str, list]:
        """The current reactions of the messages first <= seq <= last, by seq (as strings)."""
        found = await self.request("GET", f"/api/chats/{chat_id}/reactions", **{"from": first, "to": last})
        return found["reactions"]

    # stars and deleting for me

    async def star(self, chat_id: str, seq: int, starred: bool = True) -> None:
        await self.request("PUT" if starred else "DELETE", f"/api/chats/{chat_id}/messages/{seq}/star")

    async def starred(self, *, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        """``{"messages", "next_offset", "has_more"}``: starred messages, the newest first."""
        return await self.request("GET", "/api/starred", offset=offset, limit=limit)

    async def delete_for_me(self, chat_id: str, seqs: list[int]) -> None:
        await self.request("POST", f"/api/chats/{chat_id}/messages/delete", {"seqs": seqs})

    # privacy

    async def block(self, user_id: str, blocked: bool = True) -> None:
        await self.request("PUT" if blocked else "DELETE", f"/api/blocks/{user_id}")

    async def settings(self, **changes: Any) -> dict[str, Any]:
        return (await self.request("PATCH", "/api/me/settings", changes))["settings"]

    async def presence(self, user_id: str) -> dict[str, Any]:
        return await self.request("GET", f"/api/users/{user_id}/presence")

    # -- media and push (node/plugins/media and node/plugins/push own this block) -------

    def _bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
            except (ValueError, KeyError, TypeError):  # not one of the node's error bodies
                error = {"code": "http_error", "message": response.text[:200]}
            raise ClientError(error["code"], error["message"], response.status_code)

    async def upload(self, data: bytes | AsyncIterable[bytes], name: str | None = None) -> dict[str, Any]:
        """Upload media: raw bytes, or an async iterable of chunks (streamed, never held
        whole). Returns its metadata; send it with
        ``conn.send_text(chat, caption, kind="image", media=media["id"])``."""
        response = await self._http.post("/api/media", content=data, headers=self._bearer(),
                                          params={"name": name} if name else None)
        self._raise_for(response)
        return response.json()["media"]

    async def media_info(self, media_id: str) -> dict[str, Any]:
        return (await self.request("GET", f"/api/media/{media_id}/info"))["media"]

    async def fetch_media(
        self, media_id: str, *, thumbnail: bool = False, headers: dict[str, str] | None = None, auth: bool = True
    ) -> httpx.Response:
        """GET a media item's bytes (or thumbnail) as a raw response: status and headers
        as the server sent them (206, 304, 416, ...), nothing raised."""
        path = f"/api/media/{media_id}/thumbnail" if thumbnail else f"/api/media/{media_id}"
        return await self._http.get(path, headers={**(self._bearer() if auth else {}), **(headers or {})})

    async def download(self, media_id: str, *, range: tuple[int, int] | None = None, thumbnail: bool = False) -> bytes:
        """The bytes of a media item, or of `range` (first, last), inclusive."""
        headers = {"Range": f"bytes={range[0]}-{range[1]}"} if range else None
        response = await self.fetch_media(media_id, thumbnail=thumbnail, headers=headers)
        self._raise_for(response)
        return response.content

    async def signed_urls(self, media_id: str) -> dict[str, Any]:
        """``{"url", "thumbnail_url", "expires"}``: URLs (relative to the node) that work
        without a token until ``expires`` (Unix ms)."""
        return await self.request("GET", f"/api/media/{media_id}/signed")

    async def register_push_target(
        self, kind: str, endpoint: str, keys: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Register a push target: ``kind`` "webpush" (with the subscription's ``keys``,
        ``{"p256dh", "auth"}``) or "webhook". Returns ``{"id", "kind", "endpoint", "created"}``."""
        body: dict[str, Any] = {"kind": kind, "endpoint": endpoint}
        if keys is not None:
            body["keys"] = keys
        return (await self.request("POST", "/api/push/targets", body))["target"]

    async def push_targets(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "/api/push/targets"))["targets"]

    async def delete_push_target(self, target_id: str) -> None:
        await self.request("DELETE", f"/api/push/targets/{target_id}")

    async def vapid_public_key(self) -> str:
        """The node's VAPID key, for ``pushManager.subscribe({applicationServerKey})``."""
        return (await self.request("GET", "/api/push/vapid"))["public_key"]

    # -- end media and push --

    # -- chat socket -----------------------------------------------------------------

    async def ws_url(self) -> str:
        if self._ws_url is None:
            self._ws_url = (await self.info())["ws_url"]
        return self._ws_url

    @asynccontextmanager
    async def connect(
        self, *, auto_ack: bool = True, resume: bool = True, buffer: int = 100_000, reconnect: bool = False,
    ) -> AsyncIterator[Connection]:
        """Open the chat socket, authenticate, and yield a `Connection` (closed on exit).

        With `reconnect`, a connection that drops (the node failed or shut down) is opened
        again, to the next node known, with backoff; cursors and unacknowledged sends carry
        over (`Connection.reconnects` counts)."""
        async with trio.open_nursery() as nursery:
            conn = Connection(self, nursery, auto_ack=auto_ack, buffer=buffer, reconnect=reconnect)
            await conn._open(self.cursors if resume else {})
            nursery.start_soon(conn._run)
            try:
                yield conn
            finally:
                conn.reconnect = False  # closing on purpose: no reconnection
                if conn.ws is not None:  # the close handshake needs the reader still running
                    with trio.CancelScope(shield=True), trio.move_on_after(2):
                        await conn.ws.aclose()
                nursery.cancel_scope.cancel()


class Connection:
    """An authenticated chat socket. Events arrive in `events()`; acks resolve sends."""

    _ids = itertools.count(1)

    def __init__(self, client: ChatClient, nursery: trio.Nursery, *, auto_ack: bool, buffer: int,
                 reconnect: bool = False) -> None:
        self.client = client
        self.ws: WebSocketConnection | None = None
        self._nursery = nursery
        self.reconnect = reconnect
        self.reconnects = 0  # times the socket was opened again after it dropped
        self._outbox: dict[str, dict[str, Any]] = {}  # sends not acknowledged yet, to send again
        self.auto_ack = auto_ack
        self.welcome: dict[str, Any] | None = None
        self.closed: ConnectionClosed | None = None
        self.synced = trio.Event()
        self._events_send, self._events_recv = trio.open_memory_channel[dict[str, Any]](buffer if buffer else math.inf)
        self._pending: dict[str, tuple[trio.Event, list[dict[str, Any]]]] = {}
        self._skipped: deque[dict[str, Any]] = deque()  # events wait_for passed over, oldest first
        self._prefix = secrets.token_hex(4)

    @property
    def cursors(self) -> dict[str, int]:
        return self.client.cursors

    async def _open(self, cursors: dict[str, int]) -> None:
        """Connect to the client's current node and say hello (raises if it cannot)."""
        url = await self.client.ws_url()
        self.ws = await connect_websocket_url(self._nursery, url, max_message_size=16 * 1024 * 1024)
        await self._hello(cursors)

    async def _hello(self, cursors: dict[str, int]) -> None:
        assert self.ws is not None
        await self.ws.send_message(orjson.dumps({"type": "hello", "token": self.client.token, "cursors": cursors}).decode())
        data = orjson.loads(await self.ws.get_message())
        events = data if isinstance(data, list) else [data]
        if events[0].get("type") == "error":
            raise ClientError(events[0]["code"], events[0]["message"])
        self.welcome = events[0]
        await self._acknowledge(self._process(events[1:]))

    async def _run(self) -> None:
        """Read until the socket closes; with `reconnect`, open it again elsewhere."""
        try:
            while True:
                try:
                    await self._read_loop()
                    return
                except ConnectionClosed as exc:
                    self.closed = exc
                    if not self.reconnect or exc.reason is None or exc.reason.code not in RECONNECT_CODES:
                        return
                await self._reopen()
        finally:
            for event, _ in self._pending.values():
                event.set()
            self._events_send.close()

    async def _read_loop(self) -> None:
        assert self.ws is not None
        while True:
            data = orjson.loads(await self.ws.get_message())
            await self._acknowledge(self._process(data if isinstance(data, list) else [data]))

    async def _reopen(self) -> None:
        """Back off, move to the next node, resume from the cursors, resend what is unacked."""
        backoff = BACKOFF_MIN
        while True:
            await trio.sleep(random.uniform(backoff / 2, backoff))
            await self.client.next_node()
            try:
                self.synced = trio.Event()
                await self._open(self.cursors)
            except (OSError, HandshakeError, ConnectionClosed, httpx.TransportError, ClientError) as exc:
                if isinstance(exc, ClientError) and exc.code in ("unauthorized",):
                    raise
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            self.closed = None
            self.reconnects += 1
            if self._outbox:
                await self.send_events(list(self._outbox.values()))
            return

    def _process(self, events: list[dict[str, Any]]) -> dict[str, int]:
        """Track cursors, resolve pending sends, queue events; returns advanced cursors."""
        advanced: dict[str, int] = {}
        for event in events:
            kind = event.get("type")
            if kind in ("message", "ack"):
                chat, seq = event["chat"], event["seq"]
                if self.client.note_seq(chat, seq):
                    advanced[chat] = self.cursors[chat]
            elif kind == "synced":
                self.synced.set()
            ref = event.get("client_msg_id") if kind == "ack" else event.get("ref") if kind == "error" else None
            if ref:
                self._outbox.pop(ref, None)
            waiter = self._pending.pop(ref, None) if ref else None
            if waiter is not None:
                waiter[1].append(event)
                waiter[0].set()
            self._events_send.send_nowait(event)
        return advanced

    async def _acknowledge(self, advanced: dict[str, int]) -> None:
        if self.auto_ack and advanced:
            await self.send_events([{"type": "received", "chat": c, "seq": s} for c, s in advanced.items()])

    async def send_events(self, events: list[dict[str, Any]] | dict[str, Any]) -> None:
        """Send one frame with one event, or several. (With `reconnect`, a frame that
        cannot be sent because the socket is down is left to the reconnection.)"""
        assert self.ws is not None
        try:
            await self.ws.send_message(orjson.dumps(events).decode())
        except ConnectionClosed:
            if not self.reconnect:
                raise

    def new_client_msg_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    async def send_text(self, chat_id: str, text: str, *, client_msg_id: str | None = None, **extra: Any) -> dict[str, Any]:
        """Send one message and wait for its ack (raises ClientError on an error answer)."""
        return (await self.send_many([dict(chat=chat_id, text=text, client_msg_id=client_msg_id, **extra)]))[0]

    async def send_many(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send several messages in one frame; returns their acks in order."""
        frame = []
        waiters = []
        for m in messages:
            cmid = m.get("client_msg_id") or self.new_client_msg_id()
            event = {"type": "send", "kind": "text", **{k: v for k, v in m.items() if v is not None}, "client_msg_id": cmid}
            if event["kind"] == "delete":
                event.pop("text", None)
            frame.append(event)
            self._outbox[cmid] = event
            waiter = self._pending.setdefault(cmid, (trio.Event(), []))
            waiters.append(waiter)
        await self.send_events(frame if len(frame) > 1 else frame[0])
        results = []
        for done, result in waiters:
            await done.wait()
            if not result:
                raise ClientError("closed", "connection closed before the ack")
            for event in result:
                self._outbox.pop(event.get("client_msg_id") or event.get("ref") or "", None)
            if result[0]["type"] == "error":
                raise ClientError(result[0]["code"], result[0]["message"])
            results.append(result[0])
        return results

    async def send_until_acked(self, chat_id: str, text: str, *, client_msg_id: str,
                               on_answer: Callable[[float, ClientError | None], None] | None = None,
                               max_backoff: float = BACKOFF_MAX, **extra: Any) -> dict[str, Any]:
        """Send a message until it is acknowledged: on `unavailable` (retryable by
        contract) the same message again, after a backoff that doubles from BACKOFF_MIN to
        `max_backoff`; any other error is raised. `on_answer(sent, error)` hears of every
        attempt: when it was sent (trio's clock) and its error, None for the ack."""
        backoff = min(BACKOFF_MIN, max_backoff)
        while True:
            sent = trio.current_time()
            try:
                ack = await self.send_text(chat_id, text, client_msg_id=client_msg_id, **extra)
            except ClientError as exc:
                if exc.code != "unavailable":
                    raise
                if on_answer is not None:
                    on_answer(sent, exc)
                await trio.sleep(random.uniform(backoff / 2, backoff))
                backoff = min(max_backoff, backoff * 2)
                continue
            if on_answer is not None:
                on_answer(sent, None)
            return ack

    async def edit(self, chat_id: str, target_id: str, text: str) -> dict[str, Any]:
        return await self.send_text(chat_id, text, kind="edit", target=target_id)

    async def delete(self, chat_id: str, target_id: str) -> dict[str, Any]:
        return (await self.send_many([{"chat": chat_id, "kind": "delete", "target": target_id, "text": None}]))[0]

    async def read(self, chat_id: str, seq: int) -> None:
        await self.send_events({"type": "read", "chat": chat_id, "seq": seq})

    async def typing(self, chat_id: str, active: bool = True) -> None:
        await self.send_events({"type": "typing", "chat": chat_id, "typing": active})

    async def next_event(self, timeout: float = 10.0) -> dict[str, Any]:
        """The oldest event not yet taken (events `wait_for` skipped come first)."""
        if self._skipped:
            return self._skipped.popleft()
        with trio.fail_after(timeout):
            try:
                return await self._events_recv.receive()
            except trio.EndOfChannel:
                raise ClientError("closed", "connection closed while waiting") from None

    async def wait_for(
        self, type_: str, timeout: float = 10.0, *, where: Callable[[dict[str, Any]], bool] | None = None, **match: Any
    ) -> dict[str, Any]:
        """The oldest event of a type whose fields equal `match` (and for which `where`,
        if given, is true), waiting up to `timeout` seconds (then `trio.TooSlowError`).

        Events it passes over are not lost: they stay queued, in order, for later
        `wait_for`, `next_event`, `events()` and `events_nowait()` calls. So
        ``await conn.wait_for("message")`` then ``await conn.wait_for("delivered")`` finds
        both, whichever arrived first.
        """
        for i, event in enumerate(self._skipped):
            if _matches(event, type_, where, match):
                del self._skipped[i]
                return event
        with trio.fail_after(timeout):
            async for event in self._events_recv:
                if _matches(event, type_, where, match):
                    return event
                self._skipped.append(event)
        raise ClientError("closed", "connection closed while waiting")

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Every event as it comes (those `wait_for` skipped first), until the socket closes."""
        while self._skipped:
            yield self._skipped.popleft()
        async for event in self._events_recv:
            yield event

    def events_nowait(self) -> list[dict[str, Any]]:
        """Every event queued now (those `wait_for` skipped first), without waiting."""
        out = list(self._skipped)
        self._skipped.clear()
        while True:
            try:
                out.append(self._events_recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return out


def _matches(event: dict[str, Any], type_: str, where: Callable[[dict[str, Any]], bool] | None,
             match: dict[str, Any]) -> bool:
    return (event.get("type") == type_ and all(event.get(k) == v for k, v in match.items())
            and (where is None or where(event)))
