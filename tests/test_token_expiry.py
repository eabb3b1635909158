"""Tokens expire: `accounts.token_idle_timeout` after their last use and
`accounts.token_max_age` after their login (docs/protocol.md, "Tokens"). An expired token
is a logged-out device; the device list says when each token expires."""

from __future__ import annotations

import pytest
from conftest import PASSWORD, close_code, make_config, new_user, running_node

from node.client import ChatClient, ClientError
from node.testing import wait_until


async def second_device(node, username: str) -> ChatClient:
    client = ChatClient(node.http_url)
    await client.login(username, PASSWORD, device="laptop")
    return client


async def unauthorized(client: ChatClient) -> bool:
    try:
        await client.me()
    except ClientError as exc:
        return exc.status == 401
    return False


async def test_an_unused_token_expires_and_is_logged_out(tmp_path):
    config = make_config(tmp_path, accounts={"token_idle_timeout": 1.0, "token_max_age": 0})
    async with running_node(config) as node:
        alice = await new_user(node, "alice")
        laptop = await second_device(node, "alice")
        devices = {d["name"]: d for d in (await alice.request("GET", "/api/me/devices"))["devices"]}
        expires = devices["laptop"]["expires"]
        assert expires == (devices["laptop"]["last_used"] or devices["laptop"]["created"]) + 1000

        async def phone_used_past_laptop_expiry() -> bool:
            await alice.me()  # alice keeps using her phone; the laptop lies unused past the idle timeout
            return _now_ms() > expires

        await wait_until(phone_used_past_laptop_expiry, 10, interval=0.2)
        names = [d["name"] for d in (await alice.request("GET", "/api/me/devices"))["devices"]]
        assert "laptop" not in names  # logged out: gone from the list
        assert await unauthorized(laptop)
        assert not await unauthorized(alice)  # in use: still logged in
        for client in (alice, laptop):
            await client.aclose()


async def test_an_open_socket_is_use_and_the_maximum_age_ends_it(tmp_path):
    """A connected device does not expire idle, however long no request comes; at its maximum
    age its socket closes with 4003 (logged out) and the token is refused."""
    config = make_config(tmp_path, accounts={"token_idle_timeout": 0.5, "token_max_age": 3.0})
    async with running_node(config) as node:
        alice = await new_user(node, "alice")
        created = (await alice.request("GET", "/api/me/devices"))["devices"][0]["created"]
        async with alice.connect() as conn:
            await conn.synced.wait()
            # three idle timeouts pass without a request: the socket is use
            await wait_until(lambda: _now_ms() > created + 1500)
            devices = await ChatClient(node.http_url, token=alice.token).request("GET", "/api/me/devices")
            assert devices["devices"][0]["expires"] <= created + 3000
            assert await close_code(conn) == 4003
        assert _now_ms() >= created + 3000
        assert await unauthorized(alice)
        await alice.aclose()


async def test_expiry_can_be_turned_off(tmp_path):
    config = make_config(tmp_path, accounts={"token_idle_timeout": 0, "token_max_age": 0})
    async with running_node(config) as node:
        alice = await new_user(node, "alice")
        assert [d["expires"] for d in (await alice.request("GET", "/api/me/devices"))["devices"]] == [None]
        await alice.aclose()


@pytest.mark.engine("lmdb")
def test_the_defaults_are_thirty_days_idle_and_a_year():
    from node.config import AccountsSection

    assert AccountsSection().token_idle_timeout == 30 * 86_400
    assert AccountsSection().token_max_age == 365 * 86_400


def _now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000
