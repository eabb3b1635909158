"""Chats that change owners while the database is away are followed once it is back.

When a node leaves, the others subscribe their users' devices at the chats' new owners
(and catch them up from the log where they now own a chat themselves), and users whose
home moved are announced online again. During a PostgreSQL failover that work meets a
database that cannot be reached; it must be done again once the database is back, for
every user, or devices miss live messages until they reconnect, and it must not stop
the node.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import make_config, new_user, running_node
from pgserver import PgServer
from test_routing import FAST, KEY, until

from node.client import ChatClient
from node.cluster.ownership import owner_of

pytestmark = pytest.mark.engine("postgresql")  # a cluster keeps its state in PostgreSQL


def config(tmp_path: Path, node_id: int, seeds: list[str], dsn: str) -> Any:
    name = f"n{node_id}"
    return make_config(
        tmp_path / name,
        node={"data_dir": str(tmp_path / name / "data"), "id": node_id, "name": name},
        cluster={"enabled": True, "bind_port": 0, "seeds": seeds, "keys": [KEY], **FAST},
        storage={"engine": "postgresql", "dsn": dsn, "commit_timeout": 5.0},
        plugins={"lastseen": {"grace": 0.1}},  # presence moves with the users' homes: told during the outage
    )


async def group_moving(creator: ChatClient, others: list[str], owner: int, then: int) -> str:
    """A new group of `creator` and `others` that node `owner` owns among nodes 1, 2, 3 and
    node `then` among 1 and 2 (owners hash the chat id: a few tries find one)."""
    for i in range(200):
        chat_id = (await creator.create_group(f"g{i}", usernames=others))["id"]
        if owner_of(int(chat_id), [1, 2, 3]) == owner and owner_of(int(chat_id), [1, 2]) == then:
            return str(chat_id)
    raise AssertionError("no chat id with the wanted owners in 200 tries")


async def send(conn: Any, chat_id: str, text: str) -> dict[str, Any]:
    """Send until acknowledged, the same message on `unavailable`, as a client does."""
    with trio.fail_after(30):
        return await conn.send_until_acked(chat_id, text, client_msg_id=f"{chat_id}-{text}", max_backoff=0.1)


async def run_node(cfg: Any, stop: trio.Event, stopped: trio.Event,
                   task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
    """A node in a task of its own, so that it can stop while later contexts stay open."""
    try:
        async with running_node(cfg) as node:
            task_status.started(node)
            await stop.wait()
    finally:
        stopped.set()


async def test_chats_that_move_during_an_outage_are_followed_once_the_database_is_back(tmp_path: Path) -> None:
    with PgServer() as pg:
        dsn = await trio.to_thread.run_sync(pg.create_database)
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(running_node(config(tmp_path, 1, [], dsn)))
            b = await stack.enter_async_context(running_node(config(tmp_path, 2, [a.cluster.address], dsn)))
            nursery = await stack.enter_async_context(trio.open_nursery())
            stop, stopped = trio.Event(), trio.Event()
            await nursery.start(run_node, config(tmp_path, 3, [a.cluster.address], dsn), stop, stopped)
            await until(lambda: len(a.routing.ownership.members) == len(b.routing.ownership.members) == 3)
            alice, bob, dave = await new_user(a, "alice"), await new_user(b, "bob"), await new_user(b, "dave")
            # dave's chat moves from node 3 to b, where b catches dave up from the log (a
            # read); bob's moves to a, where b must subscribe bob's device again.
            dave_chat = await group_moving(dave, ["alice"], owner=3, then=2)
            bob_chat = await group_moving(alice, ["bob"], owner=3, then=1)
            async with dave.connect() as dave_conn:
                await dave_conn.synced.wait()  # dave first: b's rebalance comes to him first
                async with bob.connect() as bob_conn, alice.connect() as alice_conn:
                    await bob_conn.synced.wait(), await alice_conn.synced.wait()
                    await trio.to_thread.run_sync(pg.kill)  # the database goes away ...
                    stop.set()  # ... and node 3 leaves meanwhile
                    with trio.fail_after(60):
                        await stopped.wait()
                    await until(lambda: len(a.routing.ownership.members) == len(b.routing.ownership.members) == 2)
                    # b tried to redo the subscriptions while the database was away
                    await until(lambda: b.routing.stats.get("deferred_for_storage", 0) > 0, 30)
                    await trio.to_thread.run_sync(pg.resume)  # the database is back

                    sent = await send(alice_conn, bob_chat, "after the outage")
                    got = await bob_conn.wait_for("message", timeout=20, chat=bob_chat, text="after the outage")
                    assert got["seq"] == sent["seq"]
                    sent = await send(alice_conn, dave_chat, "to dave")
                    got = await dave_conn.wait_for("message", timeout=20, chat=dave_chat, text="to dave")
                    assert got["seq"] == sent["seq"]
            for client in (alice, bob, dave):
                await client.aclose()
