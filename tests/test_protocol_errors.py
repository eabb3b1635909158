"""Every bad input in docs/protocol.md gets its documented error and changes nothing."""

from __future__ import annotations

import logging
import socket
import struct

import orjson
import pytest
import trio
from conftest import close_code, make_config, running_node
from trio_websocket import ConnectionClosed, open_websocket_url

from node.testing import wait_until


async def raw_socket(client, *, hello: bool = True):
    """A bare WebSocket (no client library), optionally authenticated."""
    ws_cm = open_websocket_url(await client.ws_url())
    ws = await ws_cm.__aenter__()
    if hello:
        await ws.send_message(orjson.dumps({"type": "hello", "token": client.token}).decode())
        await expect(ws, "welcome")
    return ws_cm, ws


async def expect(ws, type_: str, **fields) -> dict:
    """Read events until one of `type_` arrives; fail on anything unexpected but synced."""
    with trio.fail_after(5):
        while True:
            data = orjson.loads(await ws.get_message())
            for event in data if isinstance(data, list) else [data]:
                if event["type"] == type_:
                    for key, value in fields.items():
                        assert event.get(key) == value, event
                    return event
                assert event["type"] in ("synced", "welcome"), event


async def skip_until(ws, type_: str) -> None:
    """Read events, whatever they are, until one of `type_` arrives."""
    with trio.fail_after(5):
        while True:
            data = orjson.loads(await ws.get_message())
            if any(event["type"] == type_ for event in (data if isinstance(data, list) else [data])):
                return


async def expect_close(ws) -> int:
    with trio.fail_after(5):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as exc:
            return exc.reason.code


@pytest.fixture
async def pair(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    return alice, bob, chat


async def assert_nothing_stored(client, chat):
    assert await client.history(chat["id"]) == []


@pytest.mark.parametrize(
    "frame, code",
    [
        ("{not json", "invalid_json"),
        ('"just a string"', "bad_request"),
        ('{"no": "type"}', "bad_request"),
        ('{"type": "teleport"}', "unknown_type"),
        ('{"type": "send", "chat": "1", "text": "x"}', "bad_request"),  # no client_msg_id
        ('{"type": "send", "client_msg_id": "a", "chat": "abc", "text": "x"}', "bad_request"),
        ('{"type": "send", "client_msg_id": "a", "chat": "12", "text": ""}', "bad_request"),
        ('{"type": "send", "client_msg_id": "a", "chat": "12", "text": 5}', "bad_request"),
        ('{"type": "send", "client_msg_id": "a", "chat": "12", "text": "x", "colour": "red"}', "bad_request"),
        ('{"type": "send", "client_msg_id": "a", "chat": "12", "kind": "hologram", "text": "x"}', "bad_request"),
        ('{"type": "send", "client_msg_id": "a", "chat": "12", "kind": ["text"], "text": "x"}', "bad_request"),
        ('{"type": "send", "client_msg_id": "a", "chat": "12", "kind": 1, "text": "x"}', "bad_request"),
        ('{"type": "send", "client_msg_id": "a", "chat": "12", "kind": "text", "text": "x", "forwarded": 1}',
         "bad_request"),
        # a field the kind does not take
        ('{"type": "send", "client_msg_id": "a", "chat": "12", "kind": "text", "text": "x", "target": "5"}', "bad_request"),
        ('{"type": "send", "client_msg_id": "a", "chat": "12", "kind": "text", "text": "x", "media": "5"}', "bad_request"),
        ('{"type": "send", "client_msg_id": "a", "chat": "12", "kind": "file", "media": "5", "target": "5"}', "bad_request"),
        ('{"type": "send", "client_msg_id": "a", "chat": "12", "kind": "edit", "target": "5", "text": "x", "ttl": 5}',
         "bad_request"),
        ('{"type": "send", "client_msg_id": "a", "chat": "12", "kind": "delete", "target": "5", "text": "x"}', "bad_request"),
        ('{"type": "received", "chat": "12", "seq": -1}', "bad_request"),
        ('{"type": "ping", "now": 1}', "bad_request"),  # ping takes no fields
        ('{"type": "hello", "token": "again"}', "unknown_type"),
    ],
)
async def test_malformed_frames_get_errors_and_the_connection_stays_up(pair, frame, code):
    alice, _bob, chat = pair
    ws_cm, ws = await raw_socket(alice)
    try:
        await ws.send_message(frame)
        await expect(ws, "error", code=code)
        await ws.send_message('{"type": "ping"}')  # still usable
        await expect(ws, "pong")
    finally:
        await ws_cm.__aexit__(None, None, None)
    await assert_nothing_stored(alice, chat)


async def test_ids_are_decimal_strings_and_kind_is_required(pair):
    """Ids sent as JSON numbers are refused wherever an id is expected, and so is a send
    without `kind`: nothing is stored, nothing is marked."""
    alice, bob, chat = pair
    chat_id = int(chat["id"])
    ack = None
    async with alice.connect() as a:
        ack = await a.send_text(chat["id"], "the only message")
    message_id = int(ack["id"])
    sends = [
        {"chat": chat_id, "kind": "text", "text": "x"},
        {"chat": chat["id"], "text": "no kind"},
        {"chat": chat["id"], "kind": None, "text": "null kind"},
        {"chat": chat["id"], "kind": "text", "text": "x", "reply_to": message_id},
        {"chat": chat["id"], "kind": "text", "text": "x", "reply_to": "\uff11\uff12"},  # digits to Python only
        {"chat": chat["id"], "kind": "edit", "target": message_id, "text": "changed"},
        {"chat": chat["id"], "kind": "delete", "target": message_id},
    ]
    marks = [
        {"type": "received", "chat": chat_id, "seq": 1},
        {"type": "read", "chat": chat_id, "seq": 1},
        {"type": "typing", "chat": chat_id},
    ]
    for client, events in ((alice, [{"type": "send", "client_msg_id": f"k{i}", **e} for i, e in enumerate(sends)]),
                           (bob, marks)):
        ws_cm, ws = await raw_socket(client)
        try:
            await skip_until(ws, "synced")  # the replay: bob gets alice's message, but does not mark it
            for event in events:
                await ws.send_message(orjson.dumps(event).decode())
                error = await expect(ws, "error")
                assert error["code"] == "bad_request", (event, error)
        finally:
            await ws_cm.__aexit__(None, None, None)
    history = await alice.history(chat["id"])
    assert [(m["text"], m.get("edited")) for m in history] == [("the only message", None)]
    members = (await bob.request("GET", f"/api/chats/{chat['id']}/members"))["members"]
    assert [(m["delivered_seq"], m["read_seq"]) for m in members if m["user"]["id"] == bob.user["id"]] == [(0, 0)]


async def test_client_msg_id_is_up_to_64_characters(pair):
    alice, _bob, chat = pair
    async with alice.connect() as a:
        assert (await a.send_text(chat["id"], "x", client_msg_id="é" * 64))["seq"] == 1  # 128 bytes
        assert (await a.send_text(chat["id"], "x", client_msg_id="a" * 64))["seq"] == 2
        for too_long in ("é" * 65, "a" * 65):
            with pytest.raises(Exception) as info:
                await a.send_text(chat["id"], "x", client_msg_id=too_long)
            assert info.value.code == "bad_request" and "64 characters" in info.value.message
    assert len(await alice.history(chat["id"])) == 2


async def test_null_for_an_optional_field_of_hello_is_absent(pair):
    alice, _bob, _chat = pair
    async with open_websocket_url(await alice.ws_url()) as ws:
        await ws.send_message(orjson.dumps({"type": "hello", "token": alice.token, "cursors": None}).decode())
        await expect(ws, "welcome")
        await ws.send_message(orjson.dumps({"type": "typing", "chat": _chat["id"], "typing": None}).decode())
        await ws.send_message('{"type": "ping"}')
        await expect(ws, "pong")


async def test_writing_to_a_chat_you_are_not_in(node, users, pair):
    alice, _bob, chat = pair
    mallory = await users("mallory")
    async with mallory.connect() as m:
        with pytest.raises(Exception) as info:
            await m.send_text(chat["id"], "let me in")
        assert getattr(info.value, "code", None) == "not_member"
        with pytest.raises(Exception) as info:
            await m.send_text("123456789", "no such chat")
        assert getattr(info.value, "code", None) == "not_member"
    await assert_nothing_stored(alice, chat)
    with pytest.raises(Exception) as info:
        await mallory.history(chat["id"])
    assert getattr(info.value, "status", None) == 403


async def test_oversized_message_is_refused_but_the_connection_stays(pair, node):
    alice, _bob, chat = pair
    limit = node.config.limits.max_message_bytes
    async with alice.connect() as a:
        with pytest.raises(Exception) as info:
            await a.send_text(chat["id"], "é" * (limit // 2 + 1))  # over the limit in UTF-8 bytes
        assert info.value.code == "too_large"
        ack = await a.send_text(chat["id"], "x" * limit)  # exactly at the limit is fine
        assert ack["seq"] == 1


async def test_oversized_frame_closes_with_1009(pair, node):
    alice, _bob, chat = pair
    ws_cm, ws = await raw_socket(alice)
    try:
        try:
            await ws.send_message("x" * (node.config.limits.max_frame_bytes + 1))
        except ConnectionClosed as exc:  # refused from the frame's header, while the rest was being sent
            code = exc.reason.code
        else:
            code = await expect_close(ws)
        assert code == 1009
    finally:
        await ws_cm.__aexit__(None, None, None)
    await assert_nothing_stored(alice, chat)


async def test_too_many_events_in_one_frame(pair, node):
    alice, _bob, chat = pair
    n = node.config.limits.max_events_per_frame + 1
    ws_cm, ws = await raw_socket(alice)
    try:
        frame = [{"type": "send", "client_msg_id": f"c{i}", "chat": chat["id"], "kind": "text", "text": "x"}
                 for i in range(n)]
        await ws.send_message(orjson.dumps(frame).decode())
        await expect(ws, "error", code="too_many_events")
    finally:
        await ws_cm.__aexit__(None, None, None)
    await assert_nothing_stored(alice, chat)


async def test_binary_frame_is_refused(pair):
    alice, _bob, _chat = pair
    ws_cm, ws = await raw_socket(alice)
    try:
        await ws.send_message(b'{"type":"ping"}')
        await expect(ws, "error", code="bad_request")
    finally:
        await ws_cm.__aexit__(None, None, None)


@pytest.mark.parametrize("token", ["cn_not-a-real-token", "", None, 42])
async def test_bad_token_is_refused_with_4001(pair, token):
    alice, _bob, _chat = pair
    async with open_websocket_url(await alice.ws_url()) as ws:
        await ws.send_message(orjson.dumps({"type": "hello", "token": token}).decode())
        await expect(ws, "error", code="unauthorized")
        assert await expect_close(ws) == 4001


@pytest.mark.parametrize("first", [
    "{not json", "[]", '"hello"', '{"no": "type"}', '{"type": "ping", "now": 1}', '{"type": "ping"}',
    '[{"type": "hello", "token": "T"}, {"type": "ping"}]', b'{"type": "hello", "token": "T"}',
])
async def test_anything_but_a_hello_first_is_not_hello(pair, first):
    alice, _bob, _chat = pair
    async with open_websocket_url(await alice.ws_url()) as ws:
        await ws.send_message(first.replace("T", alice.token) if isinstance(first, str)
                              else first.replace(b"T", alice.token.encode()))
        await expect(ws, "error", code="not_hello")
        assert await expect_close(ws) == 4000


@pytest.mark.parametrize("extra", [{"device": "phone"}, {"cursors": {"abc": 1}}, {"cursors": [1]},
                                   {"cursors": {"12": -1}}, {"cursors": {"12": "3"}}])
async def test_a_malformed_hello_is_a_bad_request(pair, extra):
    alice, _bob, _chat = pair
    async with open_websocket_url(await alice.ws_url()) as ws:
        await ws.send_message(orjson.dumps({"type": "hello", "token": alice.token, **extra}).decode())
        await expect(ws, "error", code="bad_request")
        assert await expect_close(ws) == 4000


async def test_null_for_an_optional_field_of_send_is_absent(pair):
    """Whatever the kind: `null` is no field, even one the kind does not take."""
    alice, _bob, chat = pair
    nulls = {"reply_to": None, "ttl": None, "forwarded": None, "mentions": None, "media": None, "target": None}
    sends = [
        {"kind": "text", "text": "one", **nulls},
        {"kind": "edit", "text": "one (edited)", **nulls},  # (target: the first message's id)
        {"kind": "delete", **nulls, "text": None},
        {"kind": "text", "text": "two", **nulls},
    ]
    async with alice.connect() as a:
        acks = []
        for i, send in enumerate(sends):
            event = {"type": "send", "client_msg_id": f"n{i}", "chat": chat["id"], **send}
            if send["kind"] != "text":
                event["target"] = acks[0]["id"]
            await a.send_events(event)
            answer = await a.wait_for("ack", where=lambda e, i=i: e.get("client_msg_id", e.get("ref")) == f"n{i}")
            acks.append(answer)
        assert [ack["seq"] for ack in acks] == [1, 2, 3, 4]
    history = await alice.history(chat["id"])
    assert [m["kind"] for m in history] == ["deleted", "edit", "delete", "text"]
    assert not any("forwarded" in m or "expires_at" in m or "mentions" in m for m in history)


async def test_first_frame_must_be_hello(pair):
    alice, _bob, chat = pair
    async with open_websocket_url(await alice.ws_url()) as ws:
        await ws.send_message(orjson.dumps({"type": "send", "client_msg_id": "x", "chat": chat["id"], "kind": "text",
                                            "text": "hi"}).decode())
        await expect(ws, "error", code="not_hello")
        assert await expect_close(ws) == 4000
    await assert_nothing_stored(alice, chat)


async def test_hello_timeout_closes_with_4002(tmp_path):
    async with running_node(make_config(tmp_path, limits={"hello_timeout": 0.3})) as node:
        info_url = node.ws_url
        async with open_websocket_url(info_url) as ws:
            await expect(ws, "error", code="not_hello")
            assert await expect_close(ws) == 4002


async def test_wrong_path_is_rejected(node):
    from trio_websocket import ConnectionRejected

    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(node.ws_url.replace("/ws", "/nope")):
            pass
    assert info.value.status_code == 404


async def test_frame_rate_limit_drops_frames_with_an_error(tmp_path):
    from conftest import new_user

    config = make_config(tmp_path, limits={"frames_per_second": 1.0, "frame_burst": 3})
    async with running_node(config) as node:
        alice = await new_user(node, "alice")
        ws_cm, ws = await raw_socket(alice)
        try:
            for _ in range(6):
                await ws.send_message('{"type": "ping"}')
            codes = []
            with trio.move_on_after(1):
                while len(codes) < 6:
                    data = orjson.loads(await ws.get_message())
                    for e in data if isinstance(data, list) else [data]:
                        if e["type"] in ("pong", "error"):
                            codes.append(e.get("code", "pong"))
            assert codes.count("pong") == 3 and codes.count("rate_limited") == 3
        finally:
            await ws_cm.__aexit__(None, None, None)
        await alice.aclose()


async def test_connections_per_user_are_limited(tmp_path):
    from conftest import new_user

    async with running_node(make_config(tmp_path, limits={"max_connections_per_user": 2})) as node:
        alice = await new_user(node, "alice")
        async with alice.connect(), alice.connect(), open_websocket_url(node.ws_url) as ws:
            await ws.send_message(orjson.dumps({"type": "hello", "token": alice.token}).decode())
            await expect(ws, "error", code="too_many_connections")
            assert await expect_close(ws) == 4009
        async with alice.connect():  # slots are free again
            pass
        await alice.aclose()


async def test_logout_revokes_the_token_and_closes_its_connections(pair):
    alice, _bob, _chat = pair
    async with alice.connect() as a:
        await a.synced.wait()
        token = alice.token
        await alice.logout()
        assert await close_code(a) == 4003
    alice.token = token
    with pytest.raises(Exception) as info:
        await alice.me()
    assert info.value.status == 401


async def test_clients_that_hang_up_during_the_upgrade_do_no_harm(node, pair, caplog):
    """Peers that reset the connection right after asking for the upgrade are just gone:
    nothing is logged as a crash and everyone else carries on."""
    alice, bob, chat = pair
    host, port = node.ws_url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    request = (
        f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()

    async def hang_up(reset: bool) -> None:
        sock = trio.socket.socket()
        await sock.connect((host, int(port)))
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await sock.send(request)
        sock.close()  # the node's 101 answer then meets a closed socket: reset

    await alice.ws_url(), await bob.ws_url()  # (asked over HTTP once, before the count)
    before = node.connections.open_from("127.0.0.1")
    for reset in (False, True) * 10:
        await hang_up(reset)
    async with alice.connect() as a, bob.connect() as b:  # accepted after the twenty
        await b.synced.wait()
        await a.send_text(chat["id"], "still here")
        await b.wait_for("message", timeout=5)
    await wait_until(lambda: node.connections.open_from("127.0.0.1") <= before)  # the node is done with all of them
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_method_a_path_does_not_take_is_405_with_allow(node, users):
    """docs/protocol.md: `405` with `Allow` listing the methods the path takes, and the
    error body of every error (code `bad_request`); a route that takes no body ignores one."""
    import httpx

    alice = await users("alice")
    async with httpx.AsyncClient(base_url=node.http_url) as http:
        auth = {"Authorization": f"Bearer {alice.token}"}
        answer = await http.put("/api/me", headers=auth, json={"display_name": "x"})
        assert answer.status_code == 405
        assert {m.strip() for m in answer.headers["allow"].split(",")} >= {"GET", "PATCH"}
        assert "PUT" not in answer.headers["allow"]
        assert answer.json()["error"]["code"] == "bad_request"
        answer = await http.get("/api/login")
        assert answer.status_code == 405 and "POST" in answer.headers["allow"]
        assert (await http.get("/api/me", headers=auth)).json()["user"]["display_name"] == "alice"
        chat = await alice.create_group("g")
        answer = await http.post(f"/api/chats/{chat['id']}/hide", headers=auth, json={"anything": 1})
        assert answer.status_code == 204
        assert [c["hidden"] for c in (await http.get("/api/chats?hidden=1", headers=auth)).json()["chats"]] == [True]
