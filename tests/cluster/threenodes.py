"""Three in-process nodes on one PostgreSQL, and devices placed on purpose.

The feature tests (test_features*.py) start the cluster of test_routing.py and put each
device where it proves something: the sender on one node, the chat's owner another, the
recipients on the third (ownership is rendezvous hashing over the live members, so the
test reads it from the nodes, node/cluster/ownership.py). Nothing is mocked; the tests only
look at a node's routing tables to wait until a subscription has reached an owner.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio
from conftest import PASSWORD, cluster_storage, deep_merge, make_config, running_node
from test_routing import FAST, KEY, until

from node.client import ChatClient, Connection

_names = itertools.count(1)


def node_config(tmp_path: Path, node_id: int, seeds: list[str], extra: dict[str, Any]):
    name = f"n{node_id}"
    sections = deep_merge({
        "node": {"data_dir": str(tmp_path / name / "data"), "id": node_id, "name": name},
        "cluster": {"enabled": True, "bind_port": 0, "seeds": seeds, "keys": [KEY], **FAST},
        "storage": cluster_storage(tmp_path),
        "plugins": {"lastseen": {"grace": 0.1}},
    }, extra)
    return make_config(tmp_path / name, **sections)


class Cluster:
    """Three running nodes and who owns what among them."""

    def __init__(self, nodes: list) -> None:
        self.nodes = nodes
        self.clients: list[ChatClient] = []

    def node(self, node_id: int):
        return next(n for n in self.nodes if n.config.node.id == node_id)

    def converged(self) -> bool:
        return all(len(n.routing.ownership.members) == len(self.nodes) for n in self.nodes)

    def owner(self, chat_id: str | int):
        """The node that sequences a chat (every node computes the same)."""
        owners = {n.routing.owner(int(chat_id)) for n in self.nodes}
        assert len(owners) == 1, owners
        return self.node(owners.pop())

    def home(self, user: ChatClient):
        homes = {n.routing.home(int(user.user["id"])) for n in self.nodes}
        assert len(homes) == 1, homes
        return self.node(homes.pop())

    def others(self, *nodes) -> list:
        return [n for n in self.nodes if all(n is not m for m in nodes)]

    async def user(self, node, name: str | None = None, *, avoid_home: Iterable = ()) -> ChatClient:
        """A new user registered and logged in through `node`; with `avoid_home`, one whose
        home (the node that knows where their devices are) is none of those nodes."""
        avoid = {n.config.node.id for n in avoid_home}
        while True:
            username = f"{name or 'user'}{next(_names)}"
            client = ChatClient(node.http_url)
            self.clients.append(client)
            await client.register(username, PASSWORD)
            await client.login(username, PASSWORD)
            if self.nodes[0].routing.home(int(client.user["id"])) not in avoid:
                return client

    async def login(self, node, user: ChatClient, device: str = "python") -> ChatClient:
        """Another device of `user`, logged in through `node`."""
        client = ChatClient(node.http_url)
        self.clients.append(client)
        await client.login(user.user["username"], PASSWORD, device)
        return client

    async def subscribed(self, chat_id: str, *devices: tuple[Any, ChatClient], timeout: float = 15.0) -> None:
        """Until the chat's owner sends its entries live to each (node, user): the node
        where a device is connected has registered the user there (a node with no device
        of the user's has nothing to register)."""
        owner = self.owner(chat_id)

        def ready() -> bool:
            for node, client in devices:
                if node is owner:
                    continue
                users = owner.routing.subs.get(int(chat_id), {}).get(node.config.node.id, set())
                if int(client.user["id"]) not in users:
                    return False
            return True

        await until(ready, timeout)

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


async def start_cluster(stack: AsyncExitStack, tmp_path: Path, **extra: Any) -> Cluster:
    """Three nodes (ids 1, 2, 3) that see each other; `extra` config sections go to every node."""
    first = await stack.enter_async_context(running_node(node_config(tmp_path, 1, [], extra)))
    nodes = [first]
    for node_id in (2, 3):
        nodes.append(await stack.enter_async_context(
            running_node(node_config(tmp_path, node_id, [first.cluster.address], extra))))
    cluster = Cluster(nodes)
    stack.push_async_callback(cluster.aclose)
    await until(cluster.converged)
    return cluster


def messages_of(events: list[dict[str, Any]], chat_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") == "message" and e.get("chat") == chat_id]


async def collect(conn: Connection, chat_id: str, count: int, *, timeout: float = 20.0,
                  where=None) -> list[dict[str, Any]]:
    """The next `count` message events of a chat on this connection (others stay queued)."""
    got = []
    with trio.fail_after(timeout):
        while len(got) < count:
            event = await conn.wait_for("message", timeout=timeout, chat=chat_id)
            if where is None or where(event):
                got.append(event)
    return got


def assert_once_in_order(events: list[dict[str, Any]]) -> None:
    """Log entries of one chat, each once, in seq order with no gap."""
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


async def nothing_more(conn: Connection, type_: str, settle: float = 0.5, **match: Any) -> None:
    """No further event of that kind arrives (checked after the cluster had time to send it)."""
    with trio.move_on_after(settle):
        event = await conn.wait_for(type_, timeout=settle + 1, **match)
        raise AssertionError(f"unexpected {type_} event: {event}")
