"""Delivery cursors ride on the next commit instead of a commit of their own.

A `received` moves the device's `delivered` cursor at once (the sender hears `delivered`
right away) and is stored with whatever commits next, or on its own within CURSOR_LINGER
when nothing does; a graceful stop stores it too. Sends are never deferred: an ack still
follows its own durable commit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from conftest import make_config, new_user, running_node

from node.core import chats as chats_module
from node.testing import wait_until


def commits(node) -> int:
    return node.storage.statistics()["commits"]


async def settle(node) -> int:
    """The commit count once no commit has come for 0.4 s (the search indexer, plugin
    flushes commit on their own time): a quiet spell is what this waits for."""
    last = [commits(node), trio.current_time()]

    def quiet() -> bool:
        if commits(node) != last[0]:
            last[:] = [commits(node), trio.current_time()]
        return trio.current_time() - last[1] >= 0.4

    await wait_until(quiet, interval=0.05)
    return last[0]


async def stored_delivered(node, chat_id: str, user_id: str) -> int:
    stored = await node.storage.load_chats([int(chat_id)])
    return stored[int(chat_id)].members[int(user_id)]["delivered"]


class Delivery:
    """Alice has sent bob "one"; his device, which acknowledges only when told, has it."""

    def __init__(self, node, a, b, chat_id: str, bob_id: str, seq: int) -> None:
        self.node, self.a, self.b = node, a, b
        self.chat_id, self.bob_id, self.seq = chat_id, bob_id, seq

    async def acknowledge(self) -> dict[str, Any]:
        """Bob's device says it has the message; what alice is told."""
        await self.b.send_events({"type": "received", "chat": self.chat_id, "seq": self.seq})
        return await self.a.wait_for("delivered")

    async def stored(self) -> int:
        """Bob's `delivered` cursor as stored."""
        return await stored_delivered(self.node, self.chat_id, self.bob_id)


@asynccontextmanager
async def delivery(tmp_path: Path) -> AsyncIterator[Delivery]:
    async with running_node(make_config(tmp_path)) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a, bob.connect(auto_ack=False) as b:
            await b.synced.wait()
            sent = await a.send_text(chat["id"], "one")
            await b.wait_for("message", text="one")
            yield Delivery(node, a, b, chat["id"], bob.user["id"], sent["seq"])
        await alice.aclose()
        await bob.aclose()


async def test_a_received_commits_nothing_of_its_own_and_rides_on_the_next_send(tmp_path, monkeypatch):
    monkeypatch.setattr(chats_module, "CURSOR_LINGER", 30.0)  # only the next send may carry it
    async with delivery(tmp_path) as d:
        before = await settle(d.node)
        delivered = await d.acknowledge()  # told at once, before any commit
        assert delivered["seq"] == d.seq
        assert commits(d.node) == before
        assert await d.stored() < d.seq
        await d.a.send_text(d.chat_id, "two")  # acked after its commit, which carried the cursor
        assert await d.stored() == d.seq


async def test_a_cursor_nothing_carries_is_stored_within_the_linger(tmp_path, monkeypatch):
    monkeypatch.setattr(chats_module, "CURSOR_LINGER", 0.2)
    async with delivery(tmp_path) as d:
        await d.acknowledge()

        async def stored() -> bool:
            return await d.stored() == d.seq

        await wait_until(stored, 5)


async def test_a_graceful_stop_stores_the_cursors_still_waiting(tmp_path, monkeypatch):
    monkeypatch.setattr(chats_module, "CURSOR_LINGER", 30.0)
    async with delivery(tmp_path) as d:
        await d.acknowledge()
    async with running_node(make_config(tmp_path)) as node:
        assert await stored_delivered(node, d.chat_id, d.bob_id) == d.seq
