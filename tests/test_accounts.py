"""Registration, login, tokens, logout and login rate limits over the REST API."""

from __future__ import annotations

import pytest
from conftest import ADMIN_TOKEN, PASSWORD, make_config, running_node

from node.client import ChatClient, ClientError


async def expect_error(code: str, coro) -> ClientError:
    with pytest.raises(ClientError) as info:
        await coro
    assert info.value.code == code, info.value
    return info.value


async def test_register_login_me_logout(node):
    async with ChatClient(node.http_url) as c:
        user = await c.register("Alice", PASSWORD, display_name="Alice A.")
        assert user["username"] == "alice" and user["display_name"] == "Alice A." and user["id"].isdigit()
        result = await c.login("ALICE", PASSWORD)
        assert result["token"].startswith("cn_") and result["user"]["id"] == user["id"]
        me = await c.me()
        assert me["user"] == user and me["device_id"] == result["device_id"]
        await c.logout()
        c.token = result["token"]
        assert (await expect_error("unauthorized", c.me())).status == 401


@pytest.mark.parametrize("name", ["ab", "-alice", "al ice", "a" * 33, "élodie", "", 7, None])
async def test_username_rules(node, name):
    async with ChatClient(node.http_url) as c:
        err = await expect_error("invalid_username", c.request("POST", "/api/register", {"username": name, "password": PASSWORD}))
        assert err.status == 400


async def test_password_minimum_and_duplicates(node):
    async with ChatClient(node.http_url) as c:
        assert (await expect_error("weak_password", c.register("bob", "short"))).status == 400
        await c.register("bob", PASSWORD)
        assert (await expect_error("username_taken", c.register("BOB", PASSWORD))).status == 409


async def test_tokens_are_stored_hashed_and_several_devices_work(node):
    async with ChatClient(node.http_url) as laptop, ChatClient(node.http_url) as phone:
        await laptop.register("carol", PASSWORD)
        await laptop.login("carol", PASSWORD)
        await phone.login("carol", PASSWORD)
        assert laptop.token != phone.token
        stored = [repr(row) for page in [p async for p in node.storage.export("tokens")] for row in page]
        assert len(stored) == 2
        assert not any(laptop.token in row or phone.token in row for row in stored)
        await laptop.logout()
        assert (await phone.me())["user"]["username"] == "carol"  # the other device stays logged in


async def test_failed_logins_are_rate_limited_per_user(tmp_path):
    config = make_config(tmp_path, accounts={"login_failures_per_user": 3, "login_failures_per_address": 100})
    async with running_node(config) as node, ChatClient(node.http_url) as c:
        await c.register("dave", PASSWORD)
        for _ in range(3):
            await expect_error("unauthorized", c.login("dave", "wrong password"))
        err = await expect_error("rate_limited", c.login("dave", PASSWORD))  # even the right one waits
        assert err.status == 429
        await c.register("erin", PASSWORD)
        await c.login("erin", PASSWORD)  # other users are not affected


async def test_failed_logins_are_rate_limited_per_address(tmp_path):
    config = make_config(tmp_path, accounts={"login_failures_per_user": 100, "login_failures_per_address": 4})
    async with running_node(config) as node, ChatClient(node.http_url) as c:
        await c.register("frank", PASSWORD)
        for i in range(4):
            await expect_error("unauthorized", c.login(f"nobody{i}", "whatever1"))
        await expect_error("rate_limited", c.login("frank", PASSWORD))


async def test_registration_can_be_closed(tmp_path):
    async with running_node(make_config(tmp_path, accounts={"registration_open": False})) as node:
        async with ChatClient(node.http_url) as c:
            assert (await c.info())["registration_open"] is False
            assert (await expect_error("registration_closed", c.register("gina", PASSWORD))).status == 403


@pytest.mark.parametrize(
    "body, code",
    [(b"{oops", "invalid_json"), (b"[1,2]", "bad_request"), (b'{"username": "x"}', "bad_request")],
)
async def test_bad_login_bodies(node, body, code):
    async with ChatClient(node.http_url) as c:
        response = await c._http.post("/api/login", content=body)
        assert response.status_code == 400 and response.json()["error"]["code"] == code


async def test_api_requires_a_token(node):
    async with ChatClient(node.http_url) as c:
        for path in ("/api/me", "/api/chats", "/api/users?prefix=a"):
            response = await c._http.get(path)
            assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
        response = await c._http.get("/api/nowhere")
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


async def test_admin_endpoints_and_metrics(node, users):
    alice = await users("alice")
    async with alice.connect():
        stats = await alice.request("GET", "/api/admin/stats")  # loopback, no admin token configured
        assert stats["hub"]["connections"] == 1
        response = await alice._http.get("/metrics")
        assert response.status_code == 200
        assert "chatnode_hub_connections 1.0" in response.text
        assert "chatnode_storage_commits" in response.text


async def test_admin_token_is_required_when_configured(tmp_path):
    async with running_node(make_config(tmp_path, admin={"token": ADMIN_TOKEN})) as node, ChatClient(node.http_url) as c:
        assert (await c._http.get("/metrics")).status_code == 401
        assert (await c._http.get("/api/admin/stats", headers={"Authorization": "Bearer wrong"})).status_code == 401
        ok = await c._http.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert ok.status_code == 200 and "chatnode_hub_connections" in ok.text


@pytest.mark.parametrize("size", [200_000, 3_000_000])
async def test_an_early_error_on_a_big_body_is_still_answered(node, size):
    """A route that refuses a request before reading its body (401 here) still answers."""
    async with ChatClient(node.http_url, timeout=10) as c:
        response = await c._http.post("/api/logout", content=b"x" * size)
        assert response.status_code == 401
        assert (await c._http.get("/healthz")).status_code == 200
