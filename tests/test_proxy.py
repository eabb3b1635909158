"""Behind a reverse proxy: X-Forwarded-For is believed from `http.trusted_proxies` only,
so login limits count real clients, and nobody else can choose their address."""

from __future__ import annotations

import logging

import httpx
from conftest import ADMIN_TOKEN, PASSWORD, make_config, running_node

LIMITS = {"login_failures_per_address": 2, "login_failures_per_user": 1000}


async def login(url: str, forwarded_for: str, password: str = "wrong password!") -> int:
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/api/login", json={"username": "alice", "password": password},
                                     headers={"X-Forwarded-For": forwarded_for})
        return response.status_code


async def setup(node) -> None:
    async with httpx.AsyncClient(base_url=node.http_url) as client:
        assert (await client.post("/api/register", json={"username": "alice", "password": PASSWORD})).status_code == 201


async def test_a_trusted_proxy_names_the_client(tmp_path, caplog):
    config = make_config(tmp_path, http={"trusted_proxies": ["127.0.0.0/8"]}, accounts=LIMITS, admin={"token": ADMIN_TOKEN})
    caplog.set_level(logging.INFO, logger="node.web.access")
    async with running_node(config) as node:
        await setup(node)
        # the client put a fake address first; the proxy appended the real one
        for _ in range(2):
            assert await login(node.http_url, "10.9.9.9, 203.0.113.7") == 401
        assert await login(node.http_url, "203.0.113.7", PASSWORD) == 429  # that client is limited ...
        assert await login(node.http_url, "198.51.100.2", PASSWORD) == 200  # ... another is not
    clients = [r.fields["client"] for r in caplog.records if r.name == "node.web.access"]
    assert "203.0.113.7" in clients and "198.51.100.2" in clients and "10.9.9.9" not in clients


async def test_without_trusted_proxies_the_header_is_ignored(tmp_path):
    config = make_config(tmp_path, accounts=LIMITS)
    async with running_node(config) as node:
        await setup(node)
        for _ in range(2):
            assert await login(node.http_url, "203.0.113.7") == 401
        assert await login(node.http_url, "198.51.100.2", PASSWORD) == 429  # one peer, one budget
