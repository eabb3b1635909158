"""Shutdown does not wait for idle HTTP keep-alive connections (a browser tab holds one):
they close at once, while a request in progress still gets `http.graceful_timeout`."""

from __future__ import annotations

import orjson
import trio
from conftest import make_config

from node.app import serve_node

GRACE = 20.0  # far longer than any of the waits below: reaching it fails the test


async def read_response(stream: trio.SocketStream, buffer: bytearray) -> bytes:
    """One HTTP/1.1 response with a Content-Length body (interim 1xx responses included)."""
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some(65536)
        assert chunk, f"connection closed mid-response: {bytes(buffer)!r}"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = await stream.receive_some(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    del buffer[:]
    buffer += rest[length:]
    return head + b"\r\n\r\n" + rest[:length]


async def closed_by_server(stream: trio.SocketStream) -> bool:
    try:
        return await stream.receive_some(65536) == b""
    except trio.BrokenResourceError:  # reset: closed too
        return True


async def test_idle_keep_alive_connections_do_not_hold_up_shutdown(tmp_path):
    config = make_config(tmp_path, http={"graceful_timeout": GRACE})
    stopped = trio.Event()
    async with trio.open_nursery() as nursery:

        async def run(task_status):
            await serve_node(config, task_status=task_status)
            stopped.set()

        node = await nursery.start(run)
        started = trio.current_time()

        # an idle keep-alive connection that has served a request, like a browser tab's
        idle = await trio.open_tcp_stream("127.0.0.1", node.http_port)
        await idle.send_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        assert (await read_response(idle, bytearray())).startswith(b"HTTP/1.1 200")
        # and one that never sent anything
        fresh = await trio.open_tcp_stream("127.0.0.1", node.http_port)

        # a request in progress: headers read (100 Continue seen), body still on its way
        body = orjson.dumps({"username": "late", "password": "a long enough password"})
        busy = await trio.open_tcp_stream("127.0.0.1", node.http_port)
        await busy.send_all(
            b"POST /api/register HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10]
        )
        pending = bytearray()
        assert (await read_response(busy, pending)).startswith(b"HTTP/1.1 100")

        node.request_shutdown()
        with trio.fail_after(GRACE / 4):
            assert await closed_by_server(idle)
            assert await closed_by_server(fresh)
        await busy.send_all(body[10:])  # the request in flight completes
        response = await read_response(busy, pending)
        assert response.startswith(b"HTTP/1.1 201"), response
        with trio.fail_after(GRACE / 4):
            await stopped.wait()
        assert trio.current_time() - started < GRACE / 2
        for stream in (idle, fresh, busy):
            await stream.aclose()
