"""Usernames: exactly a-z 0-9 _ . (case-insensitive for ASCII only), never folded from
other characters, and no username a client sends, however malformed, is ever a 500."""

from __future__ import annotations

import pytest
from conftest import PASSWORD

from node.client import ChatClient, ClientError

#: What a client might send where a username goes: empty, too long for any key, other
#: scripts, characters that fold to ASCII ("\u212a" is the Kelvin sign, "K".lower()),
#: control characters, non-strings.
BAD_NAMES = ["", " ", "\u212aate", "\u0130stanbul", "ﬀoo", "a" * 600, "x" * 5000, "bob\x00", "bö b", "\u00e9lodie",
             "BOB\u200b", 7, None, ["bob"], {"a": 1}]


async def expect_error(code: str, coro) -> ClientError:
    with pytest.raises(ClientError) as info:
        await coro
    assert info.value.code == code, info.value
    return info.value


async def test_a_username_that_folds_to_ascii_is_refused_not_folded(node):
    async with ChatClient(node.http_url) as c:
        for name in ("\u212aate", "\u212aATE", "\u0130nci", "ſam"):  # Kelvin sign, dotted I, long s
            err = await expect_error("invalid_username", c.register(name, PASSWORD))
            assert err.status == 400
        assert await c.register("KATE", PASSWORD)  # ASCII case still folds: stored as kate
        assert (await c.login("Kate", PASSWORD))["user"]["username"] == "kate"
        with pytest.raises(ClientError) as info:  # the Kelvin sign does not log in as kate either
            await c.login("\u212aate", PASSWORD)
        assert info.value.status == 401


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_a_malformed_username_is_never_a_500(node, users, name):
    alice = await users("alice")
    await users("bob")
    body_login = {"username": name, "password": PASSWORD}
    with pytest.raises(ClientError) as info:
        await alice.request("POST", "/api/login", body_login)
    assert info.value.status in (400, 401), info.value
    with pytest.raises(ClientError) as info:
        await alice.request("POST", "/api/chats/direct", {"username": name})
    assert info.value.status in (400, 404), info.value
    with pytest.raises(ClientError) as info:
        await alice.request("POST", "/api/groups", {"title": "g", "usernames": [name]})
    assert info.value.status in (400, 404), info.value
    group = await alice.create_group("g", usernames=["bob"])
    with pytest.raises(ClientError) as info:
        await alice.request("POST", f"/api/chats/{group['id']}/members", {"usernames": [name]})
    assert info.value.status in (400, 404), info.value
    with pytest.raises(ClientError) as info:
        await alice.request("POST", "/api/register", {"username": name, "password": PASSWORD})
    assert info.value.status == 400, info.value
    if isinstance(name, str):
        found = await alice.request("GET", "/api/users", prefix=name[:32])
        assert all(u["username"].isascii() for u in found["users"])
    assert [m["user"]["username"] for m in await alice.members(group["id"])] == ["alice", "bob"]


async def test_user_search_does_not_fold_either(node, users):
    alice = await users("alice")
    await users("kate")
    assert [u["username"] for u in await alice.search_users("k")] == ["kate"]
    assert await alice.search_users("\u212a") == []  # the Kelvin sign is not a k
    assert await alice.search_users("K") == [u for u in await alice.search_users("k")]  # ASCII case folds
