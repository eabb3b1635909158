"""Shared fixtures: a real node on loopback (ports 0) with a real LMDB in a temp dir.

Tests talk to it with the real client (`node.client`): HTTP via httpx, chat via
trio-websocket. No component of chatnode is mocked.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from node.app import Node, serve_node
from node.client import ChatClient
from node.config import Config, structure_config

PASSWORD = "correct horse battery"
_names = itertools.count(1)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    """A config for tests: loopback, free ports, cheap argon2, data under tmp_path."""
    base = {
        "node": {"data_dir": str(tmp_path / "data")},
        "http": {"host": "127.0.0.1", "port": 0, "graceful_timeout": 3.0},
        "websocket": {"host": "127.0.0.1", "port": 0},
        "accounts": {"argon2_time_cost": 1, "argon2_memory_kib": 64},
        "limits": {"frames_per_second": 10_000.0, "frame_burst": 10_000},
    }
    return structure_config(deep_merge(base, sections), tmp_path)


@asynccontextmanager
async def running_node(config: Config) -> AsyncIterator[Node]:
    """Start a node; on exit shut it down gracefully and wait until it has stopped."""
    async with trio.open_nursery() as nursery:
        node = await nursery.start(serve_node, config)
        try:
            yield node
        finally:
            node.request_shutdown()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
async def node(config: Config) -> AsyncIterator[Node]:
    async with running_node(config) as n:
        yield n


async def new_user(node: Node, name: str | None = None, password: str = PASSWORD) -> ChatClient:
    """Register and log in a fresh user; the caller closes the client."""
    name = name or f"user{next(_names)}"
    client = ChatClient(node.http_url)
    await client.register(name, password)
    await client.login(name, password)
    return client


@pytest.fixture
async def users(node: Node) -> AsyncIterator[Any]:
    """A factory of logged-in users, closed after the test: `alice = await users("alice")`."""
    made: list[ChatClient] = []

    async def make(name: str | None = None) -> ChatClient:
        client = await new_user(node, name)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()
