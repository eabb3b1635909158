"""A cluster's web pages may use every member (node/web/cors.py): two real nodes in one
process on one PostgreSQL. Each answers the other's origin with CORS and lets its pages
open the chat socket, the page's CSP names the other member, and `GET /api/info` lists the
live members; a member that left stays allowed (a page it served may still be open), while
it is no longer listed."""

from __future__ import annotations

import httpx
import pytest
from conftest import running_node
from test_cors import FOREIGN, handshake
from test_routing import node_config, until

pytestmark = pytest.mark.engine("postgresql")  # a cluster keeps its state in PostgreSQL


def csp_of(response: httpx.Response) -> dict[str, str]:
    return dict(part.strip().split(" ", 1) for part in response.headers["content-security-policy"].split(";"))


async def test_members_allow_each_others_pages_and_the_page_names_them(tmp_path):
    async with running_node(node_config(tmp_path, 1, [])) as a:
        async with running_node(node_config(tmp_path, 2, [a.cluster.address])) as b:
            await until(lambda: len(a.cluster.http_urls()) == 2 and len(b.cluster.http_urls()) == 2)
            async with httpx.AsyncClient() as http:
                info = (await http.get(f"{a.http_url}/api/info")).json()
                assert info["nodes"] == [a.http_url, b.http_url]  # this node first

                answer = await http.get(f"{a.http_url}/api/info", headers={"Origin": b.http_url})
                assert answer.headers["access-control-allow-origin"] == b.http_url
                foreign = await http.get(f"{a.http_url}/api/info", headers={"Origin": FOREIGN})
                assert "access-control-allow-origin" not in foreign.headers
                preflight = await http.options(f"{b.http_url}/api/media", headers={
                    "Origin": a.http_url, "Access-Control-Request-Method": "POST"})
                assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == a.http_url
                assert await handshake("127.0.0.1", a.ws_port, b.http_url) == b"HTTP/1.1 101 Switching Protocols"
                assert (await handshake("127.0.0.1", a.ws_port, FOREIGN)).startswith(b"HTTP/1.1 403")

                csp = csp_of(await http.get(f"{a.http_url}/"))
                connect = csp["connect-src"].split()
                assert b.http_url in connect and "ws://127.0.0.1:*" in connect  # b's API and its socket
                assert f"ws://127.0.0.1:{a.ws_port}" in connect  # our own socket, as before
                assert b.http_url in csp["img-src"].split() and b.http_url in csp["media-src"].split()
                assert a.http_url not in connect  # 'self' covers our own origin
        # b has left: a page it served may still be open and come to a
        await until(lambda: len(a.cluster.http_urls()) == 1)
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{a.http_url}/api/info")).json()["nodes"] == [a.http_url]
            answer = await http.get(f"{a.http_url}/api/info", headers={"Origin": b.http_url})
            assert answer.headers["access-control-allow-origin"] == b.http_url
