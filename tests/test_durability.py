"""Nothing acknowledged is ever lost: restarts, SIGKILL right after acks, shutdown."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import trio
from conftest import PASSWORD, close_code, make_config, new_user, running_node, serving, storage_toml
from ports import free_port

from node.client import ChatClient
from node.testing import wait_until


async def test_restart_keeps_accounts_chats_and_history(tmp_path):
    config = make_config(tmp_path)
    async with running_node(config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a:
            acks = [await a.send_text(chat["id"], f"m{i}") for i in range(3)]
        await alice.aclose(), await bob.aclose()
    async with running_node(config) as node, ChatClient(node.http_url) as alice:
        await alice.login("alice", PASSWORD)
        chats = await alice.chats()
        assert [c["id"] for c in chats] == [chat["id"]] and chats[0]["last_seq"] == 3
        history = await alice.history(chat["id"])
        assert [(m["id"], m["seq"]) for m in history] == [(a["id"], a["seq"]) for a in acks]
        async with alice.connect() as a:  # ids and seqs continue above the old ones
            ack = await a.send_text(chat["id"], "after restart")
            assert ack["seq"] == 4 and int(ack["id"]) > int(acks[-1]["id"])



def write_config(tmp_path: Path, http_port: int, ws_port: int) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[node]
data_dir = "data"
[http]
port = {http_port}
graceful_timeout = 3.0
[websocket]
port = {ws_port}
[accounts]
argon2_time_cost = 1
argon2_memory_kib = 64
[limits]
frames_per_second = 10000.0
frame_burst = 10000
user_messages_per_second = 10000.0
user_message_burst = 100000
{storage_toml(tmp_path / "data")}
"""
    )
    return path


async def start_process(config_path: Path) -> tuple[trio.Process, str]:
    http_port = int(config_path.read_text().split("[http]\nport = ")[1].split()[0])
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "node", "serve", "--config", str(config_path), "--log-level", "WARNING"],
        cwd=config_path.parent,
    )
    url = f"http://127.0.0.1:{http_port}"
    await wait_until(lambda: serving(url, proc), 30, interval=0.05)
    return proc, url


async def test_sigkill_right_after_acks_loses_nothing(tmp_path):
    config_path = write_config(tmp_path, free_port(), free_port())
    proc, url = await start_process(config_path)
    try:
        async with ChatClient(url) as alice, ChatClient(url) as bob:
            for c, name in ((alice, "alice"), (bob, "bob")):
                await c.register(name, PASSWORD)
                await c.login(name, PASSWORD)
            chat = await alice.open_direct(username="bob")
            async with alice.connect() as a:
                acks = []
                for start in range(0, 500, 50):
                    acks += await a.send_many([{"chat": chat["id"], "text": f"m{i}"} for i in range(start, start + 50)])
                proc.send_signal(signal.SIGKILL)  # the instant the last ack arrived
                with trio.fail_after(5):
                    await proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    proc, url = await start_process(config_path)
    try:
        async with ChatClient(url) as bob:
            await bob.login("bob", PASSWORD)
            stored = await bob.whole_history(chat["id"])
            assert [(m["id"], m["seq"], m["text"]) for m in stored] == [(a["id"], a["seq"], f"m{i}") for i, a in enumerate(acks)]
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await proc.wait() == 0  # graceful shutdown on SIGTERM exits 0


async def test_graceful_shutdown_closes_sockets_with_1001_after_pending_acks(tmp_path):
    async with trio.open_nursery() as nursery:
        from node.app import serve_node

        node = await nursery.start(serve_node, make_config(tmp_path))
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a, bob.connect() as b:
            await b.synced.wait()
            frame = [{"type": "send", "client_msg_id": f"c{i}", "chat": chat["id"], "kind": "text", "text": "x"} for i in range(100)]
            await a.send_events(frame)
            first = await a.wait_for("ack")  # the node is working on the frame ...
            node.request_shutdown()  # ... and shuts down before it is done
            assert await close_code(a) == 1001 and await close_code(b) == 1001
            acks = [first] + [e for e in a.events_nowait() if e["type"] == "ack"]
        await alice.aclose(), await bob.aclose()
    # every send that was acked before the close is stored
    async with running_node(make_config(tmp_path)) as node, ChatClient(node.http_url) as bob2:
        await bob2.login("bob", PASSWORD)
        stored = await bob2.history(chat["id"], limit=200)
        assert len(acks) == 100  # in-flight sends were finished and acked before the close
        assert sorted(m["id"] for m in stored) == sorted(a["id"] for a in acks)
