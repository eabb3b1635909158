"""Which web pages may use a node (node/web/cors.py), against a real node: CORS headers on
/api/ for allowed origins only, preflights, and the chat socket's Origin check.

A single node allows its own origin and `http.allowed_origins`; the cluster's members are
added in tests/cluster/test_cors_cluster.py.
"""

from __future__ import annotations

import httpx
import orjson
import pytest
import trio
from conftest import make_config, new_user, running_node
from trio_websocket import ConnectionRejected, open_websocket_url

ALLOWED = "https://app.example"
FOREIGN = "https://evil.example"


@pytest.fixture
async def node(tmp_path):
    async with running_node(make_config(tmp_path, http={"allowed_origins": [ALLOWED + "/"]})) as n:
        yield n


async def get(node, path: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=node.http_url) as http:
        return await http.get(path, headers=headers)


async def test_api_answers_with_cors_headers_for_allowed_origins_only(node):
    alice = await new_user(node, "alice")
    bearer = {"Authorization": f"Bearer {alice.token}"}
    for origin in (ALLOWED, node.http_url):  # a configured origin, and the node's own
        response = await get(node, "/api/me", Origin=origin, **bearer)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == origin
        assert "Origin" in response.headers["vary"]
        assert "X-Request-Id" in response.headers["access-control-expose-headers"]
        assert "access-control-allow-credentials" not in response.headers  # bearer tokens, never cookies
    error = await get(node, "/api/me", Origin=ALLOWED)  # the page may read an error, too
    assert error.status_code == 401 and error.headers["access-control-allow-origin"] == ALLOWED

    for origin in (FOREIGN, "null", f"{ALLOWED}:8443", ALLOWED.replace("https", "http")):
        response = await get(node, "/api/me", Origin=origin, **bearer)
        assert response.status_code == 200  # the node answers; the browser keeps it from the page
        assert "access-control-allow-origin" not in response.headers, origin
        assert "Origin" in response.headers["vary"]
    assert "access-control-allow-origin" not in (await get(node, "/api/info")).headers  # no Origin: no CORS
    for path in ("/", "/healthz"):  # only the API is shared
        assert "access-control-allow-origin" not in (await get(node, path, Origin=ALLOWED)).headers
    await alice.aclose()


async def test_preflights_are_answered_for_allowed_origins_and_refused_for_others(node):
    asking = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    async with httpx.AsyncClient(base_url=node.http_url) as http:
        ok = await http.options("/api/media?name=a.png", headers={"Origin": ALLOWED, **asking})
        assert ok.status_code == 204 and ok.content == b""
        assert ok.headers["access-control-allow-origin"] == ALLOWED
        assert "POST" in ok.headers["access-control-allow-methods"]
        allowed_headers = ok.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed_headers and "content-type" in allowed_headers
        assert ok.headers["access-control-max-age"] == "600"  # the browser keeps the answer 10 minutes

        refused = await http.options("/api/media", headers={"Origin": FOREIGN, **asking})
        assert refused.status_code == 403
        assert not any(name.startswith("access-control-") for name in refused.headers)

        # what follows a preflight: a cross-origin JSON POST, answered with the header
        login = await http.post("/api/register", json={"username": "bob", "password": "correct horse battery"},
                                headers={"Origin": ALLOWED})
        assert login.status_code == 201 and login.headers["access-control-allow-origin"] == ALLOWED


async def handshake(host: str, port: int, origin: str | None) -> bytes:
    """The status line of the answer to a WebSocket upgrade with this Host and Origin."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        lines = ["GET /ws HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
        if origin is not None:
            lines.append(f"Origin: {origin}")
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = b""
        with trio.fail_after(10):
            while b"\r\n" not in answer:
                data = await stream.receive_some(4096)
                if not data:
                    break
                answer += data
    return answer.split(b"\r\n", 1)[0]


async def test_the_chat_socket_refuses_pages_of_other_origins(node):
    port, http_port = node.ws_port, node.http_port
    accepted = [
        ("127.0.0.1", None),  # a program (no Origin): its token decides
        ("127.0.0.1", node.http_url),  # the page this node served
        ("chat.local", f"http://chat.local:{http_port}"),  # ... under another name: same host, HTTP port
        ("127.0.0.1", ALLOWED),  # configured
    ]
    refused = [
        ("127.0.0.1", FOREIGN),
        ("127.0.0.1", "null"),  # a sandboxed frame or a file
        ("chat.local", f"http://chat.local:{http_port + 1}"),  # same host, another site's port
        ("chat.local", f"http://other.local:{http_port}"),  # another host
    ]
    for host, origin in accepted:
        assert await handshake(host, port, origin) == b"HTTP/1.1 101 Switching Protocols", (host, origin)
    for host, origin in refused:
        assert (await handshake(host, port, origin)).startswith(b"HTTP/1.1 403"), (host, origin)

    carol = await new_user(node, "carol")
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(node.ws_url, extra_headers=[("Origin", FOREIGN)]):
            pass
    assert info.value.status_code == 403
    async with open_websocket_url(node.ws_url, extra_headers=[("Origin", ALLOWED)]) as ws:
        await ws.send_message(orjson.dumps({"type": "hello", "token": carol.token, "cursors": {}}).decode())
        with trio.fail_after(10):
            first = orjson.loads(await ws.get_message())
        assert (first[0] if isinstance(first, list) else first)["type"] == "welcome"
    await carol.aclose()
