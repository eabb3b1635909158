"""Login limits: attempts are counted before the password is hashed (concurrent guesses do
not slip past the count, at login or at a password change), and guessing someone's
password slows down the guesser, never locks the owner out of an address they use."""

from __future__ import annotations

import pytest
import trio
from conftest import ADMIN_TOKEN, PASSWORD, make_config, running_node

from node.client import ChatClient, ClientError
from node.core.ratelimit import Attempt, LoginLimiter

NEW_PASSWORD = "a brand new password"


async def statuses(coros) -> list[int]:
    """Run the calls at once; the HTTP status each ended with."""
    out: list[int] = []

    async def one(coro) -> None:
        try:
            await coro
            out.append(200)
        except ClientError as exc:
            out.append(exc.status)

    async with trio.open_nursery() as nursery:
        for coro in coros:
            nursery.start_soon(one, coro)
    return out


async def test_concurrent_wrong_logins_are_counted_before_hashing(tmp_path):
    config = make_config(tmp_path, accounts={"login_delay_after": 5, "login_delay": 60.0,
                                             "login_failures_per_user": 5, "login_failures_per_address": 1000})
    async with running_node(config) as node:
        clients = [ChatClient(node.http_url) for _ in range(60)]
        try:
            await clients[0].register("victim", PASSWORD)
            got = await statuses(c.login("victim", f"guess {i}") for i, c in enumerate(clients))
        finally:
            for c in clients:
                await c.aclose()
    assert got.count(401) == 5 and got.count(429) == 55, sorted(got)


async def test_concurrent_wrong_password_changes_are_counted_before_hashing(tmp_path):
    config = make_config(tmp_path, accounts={"login_delay_after": 3, "login_delay": 60.0,
                                             "login_failures_per_address": 1000})
    async with running_node(config) as node, ChatClient(node.http_url) as thief:
        await thief.register("owner", PASSWORD)
        await thief.login("owner", PASSWORD)  # say, a stolen token
        body = {"current_password": "guess", "new_password": NEW_PASSWORD}
        got = await statuses(thief.request("POST", "/api/me/password", body) for _ in range(40))
        assert got.count(403) == 3 and got.count(429) == 37, sorted(got)
        with pytest.raises(ClientError) as info:  # even the right one waits now
            await thief.request("POST", "/api/me/password", {"current_password": PASSWORD,
                                                              "new_password": NEW_PASSWORD})
        assert info.value.code == "rate_limited"


def via(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


async def login_from(client: ChatClient, address: str, username: str, password: str) -> int:
    response = await client._http.post("/api/login", json={"username": username, "password": password},
                                       headers=via(address))
    return response.status_code


async def test_no_one_can_lock_the_owner_out_of_their_own_address(tmp_path):
    """Behind a trusted proxy, clients come from many addresses. An attacker failing bob's
    password again and again, from one address or many, slows down only the attacker:
    bob logs in from the address he used before."""
    config = make_config(tmp_path, http={"trusted_proxies": ["127.0.0.1"]}, admin={"token": ADMIN_TOKEN},
                         accounts={"login_delay_after": 3, "login_delay": 60.0, "login_failures_per_user": 5,
                                   "login_failures_per_address": 1000})
    async with running_node(config) as node, ChatClient(node.http_url) as c:
        await c.register("bob", PASSWORD)
        assert await login_from(c, "198.51.100.7", "bob", PASSWORD) == 200  # bob, at home
        # one attacker: three free guesses, then every attempt waits
        got = [await login_from(c, "203.0.113.9", "bob", f"guess {i}") for i in range(10)]
        assert got == [401] * 3 + [429] * 7
        # many attackers: the per-user budget for unknown addresses (5, 3 of them used above)
        # runs out
        got = [await login_from(c, f"203.0.113.{100 + i}", "bob", "guess") for i in range(10)]
        assert got == [401] * 2 + [429] * 8
        # bob at home is not locked out, and neither is anyone else
        assert await login_from(c, "198.51.100.7", "bob", PASSWORD) == 200
        await c.register("carol", PASSWORD)
        assert await login_from(c, "203.0.113.9", "carol", PASSWORD) == 200
        # bob's own typos at home count against bob at home only, with growing delays
        got = [await login_from(c, "198.51.100.7", "bob", "typo") for _ in range(4)]
        assert got == [401] * 3 + [429]


def test_delays_grow_per_user_and_address_and_are_forgotten():
    now = [1000.0]
    limiter = LoginLimiter(delay_after=2, delay=1.0, max_delay=8.0, per_user=100, per_address=100, window=60.0,
                           clock=lambda: now[0])

    def fail() -> float | None:
        attempt = limiter.begin("bob", "192.0.2.1")
        return None if isinstance(attempt, Attempt) else attempt

    assert fail() is None and fail() is None  # free
    assert limiter.wait("bob", "192.0.2.1") == 1.0
    assert limiter.wait("bob", "192.0.2.2") == 0.0 and limiter.wait("alice", "192.0.2.1") == 0.0
    waits = []
    for _ in range(6):
        now[0] += limiter.wait("bob", "192.0.2.1")
        assert fail() is None
        waits.append(limiter.wait("bob", "192.0.2.1"))
    assert waits == [2.0, 4.0, 8.0, 8.0, 8.0, 8.0]  # doubling, up to max_delay
    assert limiter.begin("bob", "192.0.2.1") == 8.0  # refused attempts are not counted
    now[0] += 8.0 + 60.0 + 1  # quiet for long enough: forgotten
    assert limiter.wait("bob", "192.0.2.1") == 0.0
    # IPv6 addresses count per /64
    for _ in range(2):
        assert isinstance(limiter.begin("eve", "2001:db8:1:2::1"), Attempt)
    assert limiter.wait("eve", "2001:db8:1:2:ffff::9") == 1.0


def test_a_right_password_takes_its_attempt_back():
    limiter = LoginLimiter(delay_after=1, delay=5.0, max_delay=5.0, per_user=1, per_address=1, window=60.0)
    attempt = limiter.begin("bob", "192.0.2.1")
    assert isinstance(attempt, Attempt)
    assert limiter.wait("bob", "192.0.2.1") > 0  # counted while the hash runs
    limiter.succeeded(attempt)
    assert limiter.wait("bob", "192.0.2.1") == 0.0 and limiter.known("bob", "192.0.2.1")


async def test_a_refused_attempt_says_when_to_retry_in_retry_after(tmp_path):
    """A 429 carries `Retry-After`: the whole seconds its message names."""
    import re

    config = make_config(tmp_path, accounts={"login_delay_after": 1, "login_delay": 30.0,
                                             "login_failures_per_address": 1000})
    async with running_node(config) as node, ChatClient(node.http_url) as c:
        await c.register("dora", PASSWORD)
        body = {"username": "dora", "password": "guess"}
        first = await c._http.post("/api/login", json=body)
        assert first.status_code == 401 and "Retry-After" not in first.headers
        refused = await c._http.post("/api/login", json=body)
        assert refused.status_code == 429
        seconds = int(re.search(r"retry in (\d+) s", refused.json()["error"]["message"])[1])
        assert 1 <= seconds <= 31 and refused.headers["Retry-After"] == str(seconds)
