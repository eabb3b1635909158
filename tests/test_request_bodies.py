"""Request bodies are bounded before they are buffered, and slow ones time out.

Each test speaks raw HTTP/1.1 over a socket, so nothing in between buffers or limits the
body for us; memory is the node's own (it runs in this process).
"""

from __future__ import annotations

import logging
import re

import pytest
import trio
from conftest import make_config, running_node

from node.client import ClientError

CHUNK = b"x" * 65536


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def read_response(stream: trio.SocketStream) -> tuple[int, bytes]:
    """Status and everything the server sent until it closed or a full response arrived."""
    data = b""
    with trio.fail_after(10):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            match = re.search(rb"content-length: (\d+)", head, re.I)
            if sep and match and len(body) >= int(match.group(1)):
                break
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


async def test_a_declared_huge_body_is_refused_before_it_is_read(node):
    stream = await trio.open_tcp_stream("127.0.0.1", node.http_port)
    async with stream:
        await stream.send_all(
            b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1073741824\r\n\r\n" + CHUNK
        )
        status, body = await read_response(stream)
    assert status == 413
    assert b'"too_large"' in body


async def test_an_endless_chunked_body_costs_no_memory(node):
    """100 MiB sent chunked (no length to check up front) to a route that takes 64 KiB."""
    stream = await trio.open_tcp_stream("127.0.0.1", node.http_port)
    before = rss_bytes()
    peak = before
    async with stream:
        await stream.send_all(
            b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        frame = b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n"
        try:
            for i in range(1600):  # 100 MiB, unless the node hangs up first
                await stream.send_all(frame)
                if i % 100 == 0:
                    peak = max(peak, rss_bytes())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # it answered 413 and closed: what we want
        peak = max(peak, rss_bytes())
        status, _ = await read_response(stream)
    assert status == 413
    assert peak - before < 32 * 1024 * 1024, f"the node grew by {(peak - before) >> 20} MiB"


async def test_a_trickling_body_times_out(tmp_path):
    config = make_config(tmp_path, http={"body_timeout": 0.5})
    async with running_node(config) as node:
        stream = await trio.open_tcp_stream("127.0.0.1", node.http_port)
        async with stream:
            await stream.send_all(
                b"POST /api/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{\"user"
            )
            status, body = await read_response(stream)  # nothing more is ever sent
        assert status == 408
        assert b'"timeout"' in body


async def test_a_body_at_the_limit_still_works(node, users):
    """60 KiB of JSON is read and parsed (the limit is a cap, not a refusal of big-ish bodies)."""
    alice = await users()
    with pytest.raises(ClientError) as info:
        await alice.request("PATCH", "/api/me/settings", json={"read_receipts": True, "x": "p" * (60 * 1024)})
    assert info.value.code == "bad_request" and "unknown setting" in str(info.value)


async def test_a_body_field_a_route_does_not_take_is_refused_and_changes_nothing(node, users):
    """Every JSON body of the core (and the receipts plugin's read) names what it takes: a
    misspelt field is `bad_request` naming the fields it takes, not silently left out."""
    alice, bob = await users("alice"), await users("bob")
    direct = await alice.open_direct(username="bob")
    group = await alice.create_group("plans", usernames=["bob"])
    async with alice.connect() as conn:
        await conn.send_text(direct["id"], "hello")
    carol_password = "carol-password-1"
    calls = [  # (client, method, path, a body the route takes, a misspelling of one of its fields)
        (alice, "POST", "/api/register", {"username": "carol", "password": carol_password}, "displayname"),
        (alice, "POST", "/api/login", {"username": "bob", "password": "x" * 12}, "devices"),
        (alice, "POST", "/api/me/password", {"current_password": "x" * 12, "new_password": "y" * 12}, "new_pasword"),
        (alice, "POST", "/api/chats/direct", {"username": "bob"}, "user"),
        (alice, "POST", "/api/groups", {"title": "more plans"}, "member"),
        (alice, "POST", f"/api/chats/{group['id']}/members", {"usernames": ["bob"]}, "user"),
        (bob, "POST", f"/api/chats/{direct['id']}/read", {"seq": 1}, "sequence"),
    ]
    for client, method, path, body, misspelt in calls:
        with pytest.raises(ClientError) as info:
            await client.request(method, path, json={**body, misspelt: 1})
        assert info.value.status == 400 and info.value.code == "bad_request", (path, info.value)
        assert misspelt in info.value.message and all(field in info.value.message for field in body), info.value
    # ... and nothing happened: no account, no chat, no read
    with pytest.raises(ClientError) as info:
        await alice.request("POST", "/api/login", json={"username": "carol", "password": carol_password})
    assert info.value.code == "unauthorized"
    assert [c["title"] for c in await alice.chats() if c["kind"] == "group"] == ["plans"]
    chats = {c["id"]: c for c in await bob.chats()}
    assert chats[direct["id"]]["unread"] == 1
    with pytest.raises(ClientError) as info:  # one of the two, not both
        await alice.request("POST", "/api/chats/direct", json={"username": "bob", "user_id": bob.user["id"]})
    assert info.value.code == "bad_request"


async def test_an_upload_refused_from_its_length_is_answered_whole_and_logs_no_error(node, users, caplog):
    """The answer goes out in full, then the connection closes; closing it while the answer
    was still being written (the reader task, seeing the rest of the refused body) made the
    write fail and logged a traceback for every such upload."""
    alice = await users()
    for _ in range(5):
        stream = await trio.open_tcp_stream("127.0.0.1", node.http_port)
        async with stream:
            await stream.send_all(
                f"POST /api/media HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice.token}\r\n"
                f"Content-Length: {300 * 1024 * 1024}\r\n\r\n".encode() + CHUNK
            )
            status, body = await read_response(stream)
        assert status == 413 and b'"too_large"' in body and body.endswith(b"}}")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
