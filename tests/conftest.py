"""Shared fixtures: a real node on loopback (ports 0) with real storage in a temp dir.

Tests talk to it with the real client (`node.client`): HTTP via httpx, chat via
trio-websocket. No component of chatnode is mocked. The helpers are node.testing's, the
same ones plugin authors use, and a few of the suite's own: `close_code`, `flushed` and
`settled` (a ping's answer shows that nothing more was queued for a socket), `serving`
(a node process answers) and `started_together`. Tests wait for conditions, not for time
(unless time is what they test).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from node.app import Node, serve_node
from node.client import ChatClient, Connection
from node.config import Config
from node.testing import ADMIN_TOKEN, PASSWORD, deep_merge, new_user, running_node, wait_for_notifications, wait_until
from node.testing import make_config as _make_config

__all__ = ["ADMIN_TOKEN", "PASSWORD", "close_code", "deep_merge", "flushed", "make_config", "new_user", "running_node",
           "serving", "settled", "started_together", "wait_for_notifications"]


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    """A config for tests (see node.testing.make_config)."""
    return _make_config(tmp_path, **sections)


async def close_code(conn: Connection, timeout: float = 10.0) -> int:
    """Once the node has closed the chat socket: its close code."""
    await wait_until(lambda: conn.closed is not None, timeout)
    assert conn.closed is not None and conn.closed.reason is not None
    return conn.closed.reason.code


async def flushed(*conns: Connection) -> None:
    """Everything the node has queued for these sockets so far has arrived (the answer to a
    ping comes after it): for a check that something was not sent, once whatever would
    have sent it has run."""
    for conn in conns:
        await conn.send_events({"type": "ping"})
        await conn.wait_for("pong")


async def settled(node: Node, *conns: Connection) -> None:
    """The node has answered what these sockets sent so far, its plugins have handled
    what that caused, and all the node then queued for the sockets has arrived: for a
    check that something was not sent."""
    await flushed(*conns)
    await wait_for_notifications(node)
    await flushed(*conns)


async def serving(url: str, process: Any, log: Path | None = None) -> bool:
    """Whether a node process answers at `url` (its /healthz), for `wait_until`; fails the
    test if the process has exited (showing the end of its `log`)."""
    assert process.poll() is None, f"the node exited: {log.read_text(errors='replace')[-3000:] if log else ''}"
    try:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{url}/healthz", timeout=1)).status_code == 200
    except httpx.TransportError:
        return False


@asynccontextmanager
async def started_together(configs: list[Config]) -> AsyncIterator[list[Node]]:
    """Nodes whose start-ups run at the same moment (each in its own task)."""
    nodes: list[Any] = [None] * len(configs)
    async with trio.open_nursery() as outer:

        async def start(i: int) -> None:
            nodes[i] = await outer.start(partial(serve_node, configs[i]))

        async with trio.open_nursery() as starters:
            for i in range(len(configs)):
                starters.start_soon(start, i)
        try:
            yield nodes
        finally:
            for node in nodes:
                node.request_shutdown()


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
from pgserver import PgServer  # noqa: E402


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One private server for the whole run, started the first time a test needs it."""
    server = PgServer()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database for one test (dropped afterwards, connections and all)."""
    dsn = pg_server.create_database()
    yield dsn
    pg_server.drop_database(dsn)
# -- end PostgreSQL

# -- an S3-compatible object store: one private SeaweedFS per run, started only when a
#    test asks for it (`s3_server`); each test takes a bucket of its own. See tests/s3server.py.
from s3server import s3_server  # noqa: E402,F401

# -- end object store


# -- both engines: every test that starts a node runs on LMDB and on PostgreSQL, unless it
#    is marked `@pytest.mark.engine("lmdb")` because it tests one engine's own behaviour.
#    The engine is a module-scoped parameter, so module-scoped fixtures (the browser tests'
#    node process) can depend on it too (`module_engine`).
ENGINES = ("lmdb", "postgresql")
_databases: dict[str, str] = {}  # node data dir -> its database (dropped when its module ends)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "module_engine" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("engine")
        metafunc.parametrize("module_engine", marker.args if marker else ENGINES, indirect=True, scope="module")


@pytest.fixture(scope="module")
def module_engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """The storage engine of this module's tests, set for every node config made meanwhile."""
    from node import testing

    name = request.param
    if name == "postgresql":
        server = request.getfixturevalue("pg_server")

        def dsn_for(data_dir: Path) -> str:
            key = str(data_dir)
            if key not in _databases:
                _databases[key] = server.create_database()
            return _databases[key]

        testing.use_storage_engine(name, dsn_for)
    else:
        testing.use_storage_engine(name)
    yield name
    testing.use_storage_engine("lmdb")
    if name == "postgresql":  # (every node of the module has stopped: its fixtures depend on this one)
        for dsn in _databases.values():
            server.drop_database(dsn)
        _databases.clear()


@pytest.fixture(autouse=True)
def storage_engine(module_engine: str) -> str:
    """The engine this test's nodes use (see `module_engine`)."""
    return module_engine


def cluster_storage(tmp_path: Path) -> dict[str, str]:
    """The [storage] section every node of a test's cluster shares (one database)."""
    from node.testing import storage_section

    section = storage_section(tmp_path / "cluster-db")
    assert section["engine"] == "postgresql", "a cluster test runs on PostgreSQL: mark it engine('postgresql')"
    return section


def storage_toml(data_dir: Path) -> str:
    """The [storage] section of the engine in use, for tests that write a config.toml."""
    from node.testing import storage_section

    section = storage_section(data_dir)
    return "[storage]\n" + "".join(f'{key} = "{value}"\n' for key, value in section.items())
# -- end both engines
