"""Account management over the REST API: display name, password change, devices.

A real node, real HTTP and real chat sockets: a revoked device must be refused over HTTP
(401) and lose its open socket with close code 4003, exactly like a logout.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
from conftest import PASSWORD, close_code, make_config, running_node

from node.client import ChatClient, ClientError
from node.core.accounts import hash_token

NEW_PASSWORD = "a much better passphrase"


async def expect_error(code: str, status: int, coro) -> ClientError:
    with pytest.raises(ClientError) as info:
        await coro
    assert (info.value.code, info.value.status) == (code, status), info.value
    return info.value


async def still_open(conn) -> bool:
    """The socket answers a ping (so it was not closed)."""
    await conn.send_events({"type": "ping"})
    await conn.wait_for("pong", timeout=5)
    return conn.closed is None


@asynccontextmanager
async def two_devices(node, name: str):
    """One user logged in twice: (laptop, phone), each with its own token."""
    async with ChatClient(node.http_url) as laptop, ChatClient(node.http_url) as phone:
        await laptop.register(name, PASSWORD)
        laptop.device_id = (await laptop.login(name, PASSWORD, device="laptop"))["device_id"]
        phone.device_id = (await phone.login(name, PASSWORD, device="phone"))["device_id"]
        yield laptop, phone


def change_password(client: ChatClient, current: str, new: str):
    return client.request("POST", "/api/me/password", {"current_password": current, "new_password": new})


# -- display name -------------------------------------------------------------------


async def test_a_new_display_name_is_what_others_see(users):
    alice, bob = await users(), await users()
    user = (await alice.request("PATCH", "/api/me", {"display_name": "  Alice Liddell "}))["user"]
    assert user["display_name"] == "Alice Liddell" and user["id"] == alice.user["id"]
    seen = (await bob.request("GET", f"/api/users/{alice.user['id']}"))["user"]
    assert seen["display_name"] == "Alice Liddell"
    assert (await bob.open_direct(user_id=alice.user["id"]))["title"] == "Alice Liddell"
    reset = (await alice.request("PATCH", "/api/me", {"display_name": ""}))["user"]
    assert reset["display_name"] == alice.user["username"]


async def test_a_new_display_name_reaches_contacts_and_own_devices_live(node, users):
    alice, bob, stranger = await users("alice"), await users("bob"), await users("stranger")
    await alice.open_direct(username="bob")
    async with ChatClient(node.http_url) as alice_phone:
        await alice_phone.login("alice", PASSWORD, device="phone")
        async with bob.connect() as b, alice_phone.connect() as phone, stranger.connect() as s:
            for conn in (b, phone, s):
                await conn.synced.wait()
            await alice.request("PATCH", "/api/me", {"display_name": "Alice Liddell"})
            for conn in (b, phone):
                event = await conn.wait_for("user", timeout=5)
                assert event["user"]["id"] == alice.user["id"]
                assert event["user"]["display_name"] == "Alice Liddell"
            await s.send_events({"type": "ping"})  # the stranger shares no chat: no `user` before the pong
            seen = []
            while not seen or seen[-1] != "pong":
                seen.append((await s.next_event(timeout=5))["type"])
            assert "user" not in seen


@pytest.mark.parametrize(
    "body",
    [{"display_name": "x" * 65}, {"display_name": 7}, {"display_name": None}, {},
     {"display_name": "Fine", "username": "mallory"}],
)
async def test_a_bad_display_name_is_refused_and_changes_nothing(users, body):
    alice = await users()
    await alice.request("PATCH", "/api/me", {"display_name": "Before"})
    await expect_error("bad_request", 400, alice.request("PATCH", "/api/me", body))
    me = (await alice.me())["user"]
    assert me["display_name"] == "Before" and me["username"] == alice.user["username"]


# -- password -----------------------------------------------------------------------


async def test_a_wrong_current_password_is_refused_and_the_old_one_still_works(node):
    async with two_devices(node, "carol") as (laptop, phone):
        await expect_error("wrong_password", 403, change_password(laptop, "not my password", NEW_PASSWORD))
        await expect_error("weak_password", 400, change_password(laptop, PASSWORD, "short"))
        assert (await phone.me())["user"]["username"] == "carol"  # nobody was logged out
        async with ChatClient(node.http_url) as other:
            await other.login("carol", PASSWORD)
            await expect_error("unauthorized", 401, other.login("carol", NEW_PASSWORD))


async def test_wrong_current_passwords_count_toward_the_login_limit(tmp_path):
    config = make_config(tmp_path, accounts={"login_delay_after": 3, "login_delay": 60.0,
                                             "login_failures_per_address": 100})
    async with running_node(config) as node, two_devices(node, "dave") as (laptop, _phone):
        for _ in range(3):
            await expect_error("wrong_password", 403, change_password(laptop, "guess", NEW_PASSWORD))
        await expect_error("rate_limited", 429, change_password(laptop, PASSWORD, NEW_PASSWORD))
        async with ChatClient(node.http_url) as other:
            await expect_error("rate_limited", 429, other.login("dave", PASSWORD))


async def test_a_password_change_logs_out_every_other_device(node):
    async with two_devices(node, "erin") as (laptop, phone):
        async with laptop.connect() as lap, phone.connect() as ph:
            await lap.synced.wait(), await ph.synced.wait()
            result = await change_password(laptop, PASSWORD, NEW_PASSWORD)
            assert result == {"revoked": 1}
            assert await close_code(ph) == 4003
            assert await still_open(lap)
        await expect_error("unauthorized", 401, phone.me())
        assert (await laptop.me())["user"]["username"] == "erin"
        async with ChatClient(node.http_url) as other:
            await expect_error("unauthorized", 401, other.login("erin", PASSWORD))
            await other.login("erin", NEW_PASSWORD)


# -- devices ------------------------------------------------------------------------


async def test_the_device_list_shows_every_device_and_which_is_this_one(node):
    async with two_devices(node, "frank") as (laptop, phone):
        devices = (await laptop.request("GET", "/api/me/devices"))["devices"]
        assert {d["device_id"]: d["name"] for d in devices} == {laptop.device_id: "laptop", phone.device_id: "phone"}
        assert [d["device_id"] for d in devices if d["current"]] == [laptop.device_id]
        assert devices[0]["current"]
        assert all(isinstance(d["created"], int) for d in devices)
        assert isinstance(devices[0]["last_used"], int)  # this request used it
        from_phone = (await phone.request("GET", "/api/me/devices"))["devices"]
        assert [d["device_id"] for d in from_phone if d["current"]] == [phone.device_id]


async def test_revoking_another_device_closes_its_socket(node):
    async with two_devices(node, "gina") as (laptop, phone):
        async with laptop.connect() as lap, phone.connect() as ph:
            await lap.synced.wait(), await ph.synced.wait()
            await laptop.request("DELETE", f"/api/me/devices/{phone.device_id}")
            assert await close_code(ph) == 4003
            assert await still_open(lap)
        await expect_error("unauthorized", 401, phone.me())
        devices = (await laptop.request("GET", "/api/me/devices"))["devices"]
        assert [d["device_id"] for d in devices] == [laptop.device_id]


async def test_revoking_the_current_device_is_a_logout(node):
    async with two_devices(node, "hank") as (laptop, phone):
        async with laptop.connect() as lap:
            await lap.synced.wait()
            await laptop.request("DELETE", f"/api/me/devices/{laptop.device_id}")
            assert await close_code(lap) == 4003
        await expect_error("unauthorized", 401, laptop.me())
        assert (await phone.me())["user"]["username"] == "hank"


async def test_someone_elses_device_is_not_found(node):
    async with two_devices(node, "ivan") as (ivan, _), two_devices(node, "judy") as (judy, _):
        await expect_error("not_found", 404, ivan.request("DELETE", f"/api/me/devices/{judy.device_id}"))
        await expect_error("not_found", 404, ivan.request("DELETE", "/api/me/devices/not-an-id"))
        assert (await judy.me())["user"]["username"] == "judy"
        assert len((await judy.request("GET", "/api/me/devices"))["devices"]) == 2


async def test_last_use_is_kept_across_a_restart_and_a_revoked_device_stays_revoked(tmp_path):
    """Last use rides along with other commits: it must survive a restart, and must
    never write back the record of a device revoked after it was used."""
    config = make_config(tmp_path)
    async with running_node(config) as node, two_devices(node, "kate") as (laptop, phone):
        await phone.me()  # noted as used, waiting for the next commit
        await laptop.request("DELETE", f"/api/me/devices/{phone.device_id}")
        await laptop.settings(read_receipts=False)  # another commit
        laptop_token, phone_token = laptop.token, phone.token
    async with running_node(config) as node, ChatClient(node.http_url, token=laptop_token) as laptop:
        stored = await node.storage.get_token(hash_token(laptop_token))  # before any use
        assert isinstance(stored["last_used"], int)
        devices = (await laptop.request("GET", "/api/me/devices"))["devices"]
        assert len(devices) == 1 and devices[0]["last_used"] >= stored["last_used"]
        async with ChatClient(node.http_url, token=phone_token) as phone:
            await expect_error("unauthorized", 401, phone.me())
