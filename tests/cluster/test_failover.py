"""A node dies (kill -9) under load, several times: nothing acknowledged is lost.

Three `chatnode serve` processes share a private PostgreSQL. Users are spread over the
nodes, each device knows every node and reconnects (to the next one, with backoff) when
its node goes; senders keep sending throughout, retrying unacknowledged sends with the
same client_msg_id. Each round kills a node at a random moment, restarts it, and checks:
every acknowledged message is stored exactly once, every device received every message
of its chats exactly once and in order, with no gap. The counts of every round are
written to test-artifacts/cluster_kill_rounds.json.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import PASSWORD, storage_toml

from node.client import ChatClient, ClientError

pytestmark = pytest.mark.engine("postgresql")  # a cluster keeps its state in PostgreSQL

KEY = base64.b64encode(bytes(range(1, 33))).decode()
ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"
ROUNDS = int(os.environ.get("CHATNODE_KILL_ROUNDS", "3"))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_cluster_port(host: str = "127.0.0.1") -> int:
    while True:  # gossip needs the same number free for UDP and TCP
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((host, port))
            return port
        except OSError:
            continue


class NodeProcess:
    """`python -m node serve` as one member of the cluster, restartable on the same ports."""

    def __init__(self, root: Path, node_id: int, seeds: list[str], storage: str, cluster_host: str = "127.0.0.1",
                 ) -> None:
        self.node_id = node_id
        self.dir = root / f"n{node_id}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.http_port, self.ws_port = free_port(), free_port()
        self.cluster_host = cluster_host
        self.cluster_address = f"{cluster_host}:{free_cluster_port(cluster_host)}"
        self.url = f"http://127.0.0.1:{self.http_port}"
        seed_list = ", ".join(f'"{s}"' for s in seeds)
        (self.dir / "config.toml").write_text(f"""
[node]
id = {node_id}
name = "n{node_id}"
data_dir = "data"
[http]
port = {self.http_port}
graceful_timeout = 1.0
[websocket]
port = {self.ws_port}
[accounts]
argon2_time_cost = 1
argon2_memory_kib = 64
login_failures_per_address = 100000
[limits]
frames_per_second = 10000.0
frame_burst = 10000
user_messages_per_second = 10000.0
user_message_burst = 100000
[cluster]
enabled = true
bind_host = "{cluster_host}"
bind_port = {self.cluster_address.rsplit(":", 1)[1]}
seeds = [{seed_list}]
keys = ["{KEY}"]
probe_interval = 0.2
probe_timeout = 0.1
suspicion_mult = 2
gossip_interval = 0.05
push_pull_interval = 2.0
reconnect_interval = 1.0
leave_timeout = 0.5
{storage}
""")
        self.proc: trio.Process | None = None

    async def start(self) -> None:
        log = open(self.dir / "node.log", "ab")
        self.proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "node", "serve", "--config", str(self.dir / "config.toml"), "--log-level", "WARNING"],
            cwd=self.dir, stdout=log, stderr=log)
        with trio.fail_after(30):
            while True:
                try:
                    async with httpx.AsyncClient() as http:
                        if (await http.get(f"{self.url}/healthz", timeout=1)).status_code == 200:
                            return
                except httpx.TransportError:
                    pass
                assert self.proc.poll() is None, (self.dir / "node.log").read_text()[-3000:]
                await trio.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    async def wait(self) -> None:
        if self.proc is not None:
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                await self.proc.wait()
            if self.proc.poll() is None:
                self.proc.kill()
                await self.proc.wait()


class Device:
    """One user's connected device: records every message event it receives."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client
        self.received: dict[str, list[int]] = {}  # chat -> seqs in arrival order
        self.acked: dict[str, tuple[str, int]] = {}  # client_msg_id -> (chat, seq)
        self.conn: Any = None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self.client.connect(reconnect=True) as conn:
            self.conn = conn
            task_status.started()
            async for event in conn.events():
                if event["type"] == "message":
                    self.received.setdefault(event["chat"], []).append(event["seq"])


async def run_cluster_under_kills(tmp_path: Path, *, polite: bool = False) -> list[dict[str, Any]]:
    """Rounds of load during which one node goes: killed (-9), or stopped politely
    (SIGTERM) in turn, as a rolling restart does."""
    storage = storage_toml(tmp_path / "cluster-db")
    first = NodeProcess(tmp_path, 1, [], storage)
    nodes = [first] + [NodeProcess(tmp_path, i, [first.cluster_address], storage) for i in (2, 3)]
    await first.start()
    for node in nodes[1:]:
        await node.start()
    urls = [n.url for n in nodes]
    rng = random.Random(int(os.environ.get("CHATNODE_KILL_SEED", "7")))
    rounds: list[dict[str, Any]] = []
    retries = 0  # `unavailable` answers the senders had to retry
    try:
        devices: list[Device] = []
        for i in range(6):  # six users, two per node
            home = urls[i % 3:] + urls[:i % 3]
            client = ChatClient(home)
            await client.register(f"user{i}", PASSWORD)
            await client.login(f"user{i}", PASSWORD)
            devices.append(Device(client))
        chats = []
        for i in range(0, 6, 2):  # pairs across nodes: 0-1, 2-3, 4-5
            chat = await devices[i].client.open_direct(username=f"user{i + 1}")
            chats.append((devices[i], devices[i + 1], chat["id"]))
        async with trio.open_nursery() as nursery:
            for device in devices:
                await nursery.start(device.run)
            for round_ in range(ROUNDS):
                sent_before = sum(len(d.acked) for d in devices)
                stop = trio.Event()

                async def sender(device: Device, chat_id: str, tag: str) -> None:
                    n = 0
                    while not stop.is_set():
                        cmid = f"{tag}-{n}"
                        while True:  # as a real client does: the same message until it is acked
                            try:
                                with trio.fail_after(30):
                                    ack = await device.conn.send_text(chat_id, cmid, client_msg_id=cmid)
                                break
                            except ClientError as exc:
                                if exc.code != "unavailable":  # retryable by contract; nothing else is
                                    raise
                                nonlocal retries
                                retries += 1
                                await trio.sleep(0.05)
                        device.acked[cmid] = (chat_id, ack["seq"])
                        n += 1

                async with trio.open_nursery() as load:
                    for i, (a, b, chat_id) in enumerate(chats):
                        load.start_soon(sender, a, chat_id, f"r{round_}-c{i}-a")
                        load.start_soon(sender, b, chat_id, f"r{round_}-c{i}-b")
                    await trio.sleep(rng.uniform(0.3, 1.0))  # load runs a random while, then ...
                    if polite:
                        victim = nodes[round_ % 3]  # ... the next node is restarted
                        await victim.stop()
                    else:
                        victim = nodes[rng.randrange(3)]
                        victim.kill()  # ... one node dies mid-flight
                        await victim.wait()
                    await trio.sleep(rng.uniform(0.5, 1.5))  # the others serve while it is down
                    await victim.start()
                    await trio.sleep(0.5)
                    stop.set()
                acked_now = sum(len(d.acked) for d in devices)
                rounds.append({"round": round_ + 1, "killed": victim.node_id, "acked": acked_now - sent_before,
                               "retried": retries})
            report = await check(devices, chats, urls)
            report["reconnects"] = sum(d.conn.reconnects for d in devices)
            for entry in rounds:
                entry.update(report)
            nursery.cancel_scope.cancel()
    finally:
        for node in nodes:
            await node.stop()
    return rounds


async def check(devices: list[Device], chats: list[tuple[Device, Device, str]], urls: list[str]) -> dict[str, int]:
    """Wait for delivery to settle, then compare what was acked, stored and delivered."""
    stored: dict[str, list[dict[str, Any]]] = {}
    if True:
        for a, b, chat_id in chats:
            reader_for = ChatClient(urls, token=a.client.token)
            messages: list[dict[str, Any]] = []
            before = None
            while True:
                page = await reader_for.history(chat_id, before=before, limit=200)
                messages = page + messages
                if len(page) < 200:
                    break
                before = page[0]["seq"]
            await reader_for.aclose()
            stored[chat_id] = messages
    lost = duplicated_in_log = 0
    for device in devices:
        for cmid, (chat_id, seq) in device.acked.items():
            matching = [m for m in stored[chat_id] if m.get("client_msg_id") == cmid]
            lost += not matching
            duplicated_in_log += len(matching) > 1
            assert not matching or matching[0]["seq"] == seq, (cmid, seq, matching)
    duplicates = gaps = 0
    def missing(detail: list[Any] | None = None) -> int:
        """Stored entries some device has neither received nor sent itself."""
        count = 0
        for a, b, chat_id in chats:
            seqs = {m["seq"] for m in stored[chat_id]}
            for device in (a, b):
                own = {seq for chat, seq in device.acked.values() if chat == chat_id}
                gone = seqs - set(device.received.get(chat_id, ())) - own
                count += len(gone)
                if gone and detail is not None:
                    records = [m for m in stored[chat_id] if m["seq"] in gone]
                    detail.append({"user": device.client.user["username"], "chat": chat_id, "missing": sorted(gone),
                                   "sent_as": [m.get("client_msg_id") for m in records],
                                   "acked_by": [d.client.user["username"] for d in devices for m in records
                                                if m.get("client_msg_id") in d.acked],
                                   "node": device.client.base_url, "reconnects": device.conn.reconnects,
                                   "last": max(seqs), "cursor": device.client.cursors.get(chat_id)})
        return count

    with trio.move_on_after(30):
        while missing():
            await trio.sleep(0.1)
    for a, b, chat_id in chats:
        for device in (a, b):
            got = device.received.get(chat_id, [])
            duplicates += len(got) - len(set(got))
            gaps += sum(1 for x, y in zip(got, got[1:]) if y < x)  # out of order
    delivered = sum(len(d.received.get(c, [])) for a, b, c in chats for d in (a, b))
    return {"stored": sum(len(v) for v in stored.values()), "delivered": delivered, "lost": lost,
            "duplicated_in_log": duplicated_in_log, "duplicate_deliveries": duplicates, "out_of_order": gaps,
            "undelivered": missing(), "undelivered_detail": (detail := [], missing(detail))[0]}


async def test_kill_9_under_load_loses_nothing(tmp_path):
    with trio.fail_after(240):
        rounds = await run_cluster_under_kills(tmp_path)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "cluster_kill_rounds.json").write_text(json.dumps(rounds, indent=2))
    assert rounds and all(r["acked"] > 0 for r in rounds), rounds
    final = rounds[-1]
    assert final["lost"] == 0 and final["duplicated_in_log"] == 0, final
    assert final["duplicate_deliveries"] == 0 and final["out_of_order"] == 0 and final["undelivered"] == 0, final


async def test_a_rolling_restart_costs_clients_only_a_reconnect(tmp_path):
    """Each node in turn is stopped politely under load and started again: it hands its
    chats over and passes on what still reaches it, so no send is ever refused, and
    nothing is lost, repeated or reordered."""
    with trio.fail_after(240):
        rounds = await run_cluster_under_kills(tmp_path, polite=True)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "cluster_rolling_restart.json").write_text(json.dumps(rounds, indent=2))
    final = rounds[-1]
    assert all(r["acked"] > 0 for r in rounds), rounds
    assert final["lost"] == 0 and final["duplicated_in_log"] == 0, final
    assert final["duplicate_deliveries"] == 0 and final["out_of_order"] == 0 and final["undelivered"] == 0, final
    assert final["retried"] == 0, final  # no `unavailable`: the stopping node handed over
    assert final["reconnects"] > 0, final  # the devices of each stopped node did move
