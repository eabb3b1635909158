"""The word guard, tested the way a plugin author would: a real node from node.testing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from node.client import ClientError
from node.testing import new_user, open_test_node, wait_for_notifications

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from word_guard import WordGuard  # noqa: E402


async def test_banned_words_are_refused_also_in_edits_and_counted(tmp_path):
    config = {"plugins": {"word_guard": {"words": ["spam"]}}}
    async with open_test_node(tmp_path, plugins=[WordGuard()], config=config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as conn:
            sent = await conn.send_text(chat["id"], "hello")
            with pytest.raises(ClientError) as refused:
                await conn.send_text(chat["id"], "buy SPAM now")
            assert refused.value.code == "banned_word"
            with pytest.raises(ClientError) as edit_refused:  # an edit cannot sneak it in
                await conn.edit(chat["id"], sent["id"], "spam after all")
            assert edit_refused.value.code == "banned_word"
        assert [m["text"] for m in await bob.history(chat["id"])] == ["hello"]
        await wait_for_notifications(node)
        strikes = await alice.request("GET", "/api/word-guard/strikes")  # a loopback admin
        assert strikes == {"strikes": {alice.user["id"]: 2}}
        stats = await alice.request("GET", "/api/admin/stats")
        assert stats["plugins"]["word_guard"] == {"refused": 2}
        await alice.aclose(), await bob.aclose()
