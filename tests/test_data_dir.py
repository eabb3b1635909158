"""The data dir is the node's alone (docs/operations.md, "Before exposing a node" and "Data
and backups"): made 0700, with every file in it 0600 whatever the umask, the message search
index and the activity log included, and those an older version left readable changed."""

from __future__ import annotations

import os
import signal
import stat
import sys
from pathlib import Path

import pytest
import trio
from conftest import PASSWORD, serving
from ports import free_port

from node.client import ChatClient
from node.testing import wait_until

pytestmark = pytest.mark.engine("lmdb")  # the data dir's own files: LMDB and its search index


def open_modes(data_dir: Path) -> list[str]:
    """Every file or folder under the data dir that others than its owner may use."""
    return [f"{oct(stat.S_IMODE(p.stat().st_mode))} {p.relative_to(data_dir)}"
            for p in [data_dir, *data_dir.rglob("*")] if stat.S_IMODE(p.stat().st_mode) & 0o077]


async def test_every_file_in_the_data_dir_is_the_nodes_alone(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "search.sqlite").touch(mode=0o644)  # an index an older version left readable
    (data / "analytics.jsonl").touch(mode=0o644)
    (data / "node.lock").touch(mode=0o644)
    http = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f"""
[node]
data_dir = "data"
[http]
port = {http}
[websocket]
port = {free_port()}
[accounts]
argon2_time_cost = 1
argon2_memory_kib = 64
[plugins.analytics]
enabled = true
flush_interval = 0.05
""")
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "node", "serve", "--config", str(config), "--log-level", "WARNING"],
        cwd=tmp_path, preexec_fn=lambda: os.umask(0o022))  # the usual umask: files 0644 unless made otherwise
    url = f"http://127.0.0.1:{http}"
    try:
        await wait_until(lambda: serving(url, proc), 30, interval=0.05)
        async with ChatClient(url) as alice, ChatClient(url) as bob:
            for client, name in ((alice, "alice"), (bob, "bob")):
                await client.register(name, PASSWORD)
                await client.login(name, PASSWORD)
            chat = await alice.open_direct(username="bob")
            async with alice.connect() as conn:
                await conn.send_text(chat["id"], "a secret plan")
            await wait_until(lambda: (data / "analytics.jsonl").stat().st_size > 0)

            async def indexed() -> bool:  # the text is in the index, whose -wal and -shm files are open now
                return [r["message"]["text"] for r in (await bob.search("secret"))["results"]] == ["a secret plan"]

            await wait_until(indexed)
        assert (data / "search.sqlite-wal").exists() and (data / "node.lock").exists()
        assert open_modes(data) == []
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            await proc.wait()
    assert open_modes(data) == []
