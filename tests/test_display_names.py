"""Display names (and group titles, and device names) cannot impersonate: they are
normalised to NFC, and bidi overrides, zero-width and other control or format characters
are refused, at registration and at every rename, changing nothing."""

from __future__ import annotations

import unicodedata

import pytest
from conftest import PASSWORD

from node.client import ChatClient, ClientError

SPOOFS = [
    "alice\u202e",  # RIGHT-TO-LEFT OVERRIDE: "gpj.exe" shown as "exe.jpg"
    "\u2067admin\u2069",  # RIGHT-TO-LEFT ISOLATE ... POP DIRECTIONAL ISOLATE
    "\u200fbob",  # RIGHT-TO-LEFT MARK
    "al\u200bice",  # ZERO WIDTH SPACE
    "ali\u200dce",  # ZERO WIDTH JOINER between letters
    "\ufeffcarol",  # ZERO WIDTH NO-BREAK SPACE
    "dave\u2060",  # WORD JOINER
    "er\u00adin",  # SOFT HYPHEN
    "frank\u00a0",  # NO-BREAK SPACE: looks like "frank "
    "gina\u3000x",  # IDEOGRAPHIC SPACE
    "line\nbreak", "tab\there", "bell\x07", "nul\x00",
    "z\u0301\u0301\u0301\u0301\u0301\u0301",  # combining marks spilling over the lines around
    "\U000f0000private",
]


async def expect_bad_request(coro) -> ClientError:
    with pytest.raises(ClientError) as info:
        await coro
    assert info.value.code == "bad_request" and info.value.status == 400, info.value
    return info.value


@pytest.mark.parametrize("name", SPOOFS)
async def test_spoofing_characters_are_refused_everywhere(node, users, name):
    async with ChatClient(node.http_url) as c:
        await expect_bad_request(c.request("POST", "/api/register", {"username": "mallory", "password": PASSWORD,
                                                                      "display_name": name}))
        with pytest.raises(ClientError):  # not registered
            await c.login("mallory", PASSWORD)
    alice = await users("alice")
    await expect_bad_request(alice.request("PATCH", "/api/me", {"display_name": name}))
    assert (await alice.me())["user"]["display_name"] == "alice"  # nothing changed
    await expect_bad_request(alice.create_group(f"team {name}"))
    group = await alice.create_group("team")
    await expect_bad_request(alice.update_chat(group["id"], title=name))
    assert (await alice.chat(group["id"]))["title"] == "team"


async def test_names_are_normalised_and_real_scripts_and_emoji_pass(node, users):
    alice = await users("alice")
    decomposed = "Zoe\u0301 Mu\u0308ller"  # e + COMBINING ACUTE, u + COMBINING DIAERESIS
    user = (await alice.request("PATCH", "/api/me", {"display_name": f"  {decomposed}  "}))["user"]
    assert user["display_name"] == unicodedata.normalize("NFC", decomposed) == "Zoé Müller"
    for name in ("محمد", "שלום עליכם", "日本語の名前", "👨\u200d👩\u200d👧 family", "🏳️\u200d🌈 Sam",
                 "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f Ewan", "Ǆemal ẞtraße"):
        assert (await alice.request("PATCH", "/api/me", {"display_name": name}))["user"]["display_name"] == name
    group = await alice.create_group("e\u0301quipe")
    assert group["title"] == "équipe"


async def test_a_device_name_keeps_only_what_a_name_may_hold(node, users):
    alice = await users("alice")
    async with ChatClient(node.http_url) as phone:
        await phone.login(alice.user["username"], PASSWORD, device="my\u202e phone\u200b")
        names = {d["name"] for d in (await phone.request("GET", "/api/me/devices"))["devices"]}
        assert "my phone" in names
