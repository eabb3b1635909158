"""Shared fixtures: a real node on loopback (ports 0) with real storage in a temp dir.

Tests talk to it with the real client (`node.client`): HTTP via httpx, chat via
trio-websocket. No component of chatnode is mocked. The helpers are node.testing's, the
same ones plugin authors use.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from node.app import Node
from node.client import ChatClient
from node.config import Config
from node.testing import PASSWORD, deep_merge, new_user, running_node, wait_for_notifications
from node.testing import make_config as _make_config

__all__ = ["PASSWORD", "deep_merge", "make_config", "new_user", "running_node", "wait_for_notifications"]


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    """A config for tests (see node.testing.make_config)."""
    return _make_config(tmp_path, **sections)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture(params=["lmdb", "postgresql"])
def engine_config(request: pytest.FixtureRequest, tmp_path: Path) -> Config:
    """A test config on each storage engine in turn (PostgreSQL: a fresh database on the
    private server). A module runs its tests on both by overriding ``config`` with a
    fixture that returns ``engine_config``."""
    if request.param == "postgresql":
        return make_config(tmp_path, engine="postgresql", dsn=request.getfixturevalue("pg_dsn"))
    return make_config(tmp_path)


@pytest.fixture
async def node(config: Config) -> AsyncIterator[Node]:
    async with running_node(config) as n:
        yield n


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


# -- PostgreSQL: one private server per run, started only when a test asks for it
#    (`pg_server`), and a fresh database per test (`pg_dsn`); see tests/pgserver.py.
from pgserver import pg_dsn, pg_server  # noqa: E402,F401
# -- end PostgreSQL
