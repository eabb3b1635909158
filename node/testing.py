"""Test helpers for plugin authors (and chatnode's own tests): a real node in-process.

    from node.testing import open_test_node, new_user, wait_for_notifications

    async def test_my_plugin(tmp_path):
        async with open_test_node(tmp_path, plugins=[MyPlugin()]) as node:
            alice = await new_user(node, "alice")
            ...
            await wait_for_notifications(node)  # every plugin has handled what happened

The node listens on free loopback ports, keeps its data under `tmp_path`, hashes
passwords cheaply, and allows far more frames per second than production (tests send in
bursts). Nothing is mocked: it is the same node `chatnode serve` runs.
"""

from __future__ import annotations

import inspect
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from .client import ChatClient
from .config import Config, structure_config

if TYPE_CHECKING:
    from .app import Node

PASSWORD = "correct horse battery"
#: An admin token for test configs that need one (a public URL or trusted proxies do).
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
_names = itertools.count(1)

#: The storage engine test nodes use (see `use_storage_engine`).
_engine: dict[str, Any] = {"name": "lmdb", "dsn_for": None}


def use_storage_engine(name: str, dsn_for: Callable[[Path], str] | None = None) -> None:
    """Make `make_config` (and so `open_test_node`) use an engine: ``"lmdb"`` (a data dir
    under the test's tmp_path) or ``"postgresql"``, where ``dsn_for(data_dir)`` gives the
    database for one node's data dir (the same dir, the same database: a restarted node
    finds its data). chatnode's own suite runs every test on both."""
    _engine.update(name=name, dsn_for=dsn_for)


def storage_section(data_dir: Path) -> dict[str, Any]:
    """The ``[storage]`` settings of the engine in use, for a node keeping its files in `data_dir`."""
    if _engine["name"] == "postgresql":
        return {"engine": "postgresql", "dsn": _engine["dsn_for"](data_dir)}
    return {"engine": "lmdb"}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    """A config for tests: loopback, free ports, cheap argon2, data under `tmp_path`, the
    storage engine of `use_storage_engine`; `sections` are merged over it
    (``storage={"sweep_interval": 0.1}``)."""
    base: dict[str, Any] = {
        "node": {"data_dir": str(tmp_path / "data")},
        "http": {"host": "127.0.0.1", "port": 0, "graceful_timeout": 3.0},
        "websocket": {"host": "127.0.0.1", "port": 0},
        "accounts": {"argon2_time_cost": 1, "argon2_memory_kib": 64},
        "limits": {"frames_per_second": 10_000.0, "frame_burst": 10_000,
                   "user_messages_per_second": 100_000.0, "user_message_burst": 1_000_000},
        "storage": storage_section(tmp_path / "data"),
    }
    return structure_config(deep_merge(base, sections), tmp_path)


@asynccontextmanager
async def running_node(config: Config, *, plugins: Iterable[Any] = (), load_entrypoints: bool = True
                       ) -> AsyncIterator[Node]:
    """Start a node; on exit shut it down gracefully and wait until it has stopped."""
    from .app import serve_node

    async with trio.open_nursery() as nursery:
        node = await nursery.start(partial(serve_node, config, plugins=plugins, load_entrypoints=load_entrypoints))
        try:
            yield node
        finally:
            node.request_shutdown()


@asynccontextmanager
async def open_test_node(
    tmp_path: Path, *, plugins: Iterable[Any] = (), config: dict[str, dict[str, Any]] | None = None
) -> AsyncIterator[Node]:
    """A node with `plugins` registered beside the built-in ones (installed plugins are
    not loaded, so a test sees only what it asks for). `config` holds sections of
    config.toml merged over the test defaults, e.g.
    ``{"plugins": {"word_guard": {"words": ["spam"]}}}`` for ``[plugins.word_guard]``."""
    async with running_node(make_config(tmp_path, **(config or {})), plugins=plugins,
                            load_entrypoints=False) as node:
        yield node


async def new_user(node: Node, name: str | None = None, password: str = PASSWORD) -> ChatClient:
    """Register and log in a fresh user; the caller closes the client."""
    name = name or f"user{next(_names)}"
    client = ChatClient(node.http_url)
    await client.register(name, password)
    await client.login(name, password)
    return client


async def wait_for_notifications(node: Node, timeout: float = 10.0) -> None:
    """Wait until every plugin has handled every notification queued so far (the pumps
    are idle): what a test did has reached the plugins, without sleeping."""
    await wait_until(lambda: not node.plugins.pending(), timeout, interval=0.005)


__all__ = [
    "ADMIN_TOKEN", "PASSWORD", "make_config", "new_user", "open_test_node", "running_node", "storage_section", "use_storage_engine",
    "wait_for_notifications", "wait_until", "wait_until_sync",
]


async def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02) -> None:
    """Until `predicate` (sync, or returning an awaitable) holds; TooSlowError after
    `timeout`. For conditions nothing announces (a row in a database, another process's
    state): anything the node signals is awaited on its event instead."""
    with trio.fail_after(timeout):
        while True:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await trio.sleep(interval)


def wait_until_sync(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02) -> None:
    """`wait_until` for code outside trio (a worker thread, a sync fixture, a browser
    test): until `predicate()` holds; TooSlowError after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise trio.TooSlowError
        time.sleep(interval)
