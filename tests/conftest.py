"""Shared fixtures: a real node on loopback (ports 0) with real storage in a temp dir.

Tests talk to it with the real client (`node.client`): HTTP via httpx, chat via
trio-websocket. No component of chatnode is mocked. The helpers are node.testing's, the
same ones plugin authors use.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
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


# -- both engines: every test runs on LMDB and on PostgreSQL, unless it is marked
#    `@pytest.mark.engine("lmdb")` because it tests one engine's own behaviour.
ENGINES = ("lmdb", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "storage_engine" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("engine")
        metafunc.parametrize("storage_engine", marker.args if marker else ENGINES, indirect=True)


@pytest.fixture(autouse=True)
def storage_engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """The engine this test's nodes use; with PostgreSQL, one fresh database per node data
    dir (created when a node's config is made, dropped after the test)."""
    from node import testing

    name = getattr(request, "param", "lmdb")
    databases: dict[str, str] = {}
    server = request.getfixturevalue("pg_server") if name == "postgresql" else None

    def dsn_for(data_dir: Path) -> str:
        key = str(data_dir)
        if key not in databases:
            databases[key] = server.create_database()
        return databases[key]

    testing.use_storage_engine(name, dsn_for if server is not None else None)
    try:
        yield name
    finally:
        testing.use_storage_engine("lmdb")
        for dsn in databases.values():
            server.drop_database(dsn)


def storage_toml(data_dir: Path) -> str:
    """The [storage] section of the engine in use, for tests that write a config.toml."""
    from node.testing import storage_section

    section = storage_section(data_dir)
    return "[storage]\n" + "".join(f'{key} = "{value}"\n' for key, value in section.items())
# -- end both engines
