"""The pieces the cluster's process tests share: node processes, devices, the checker.

`NodeProcess` runs `python -m node serve` as one member of a cluster on loopback,
restartable on the same ports; `Device` is one user's reconnecting chat socket that
records what it receives and what it got acknowledged; `until_acked` waits until the
load has run on; `check` waits for delivery to settle and compares what was
acknowledged, stored and delivered.
"""

from __future__ import annotations

import base64
import itertools
import math
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio
from conftest import serving
from ports import free_cluster_port, free_port

from node.client import ChatClient
from node.testing import wait_until

KEY = base64.b64encode(bytes(range(1, 33))).decode()
ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"

#: A chat under test: the devices of its members, and its id.
Chat = tuple[Sequence["Device"], str]


#: Membership timings that detect a failure within a second or two (a test's pace).
FAST = """probe_interval = 0.2
probe_timeout = 0.1
suspicion_mult = 2
gossip_interval = 0.05
push_pull_interval = 2.0
reconnect_interval = 1.0
leave_timeout = 0.5
"""


class NodeProcess:
    """`python -m node serve` as one member of the cluster, restartable on the same ports.
    `timings` are lines of its [cluster] section: FAST, or "" for the defaults."""

    def __init__(self, root: Path, node_id: int, seeds: list[str], storage: str, cluster_host: str = "127.0.0.1",
                 *, timings: str = FAST) -> None:
        self.node_id = node_id
        self.dir = root / f"n{node_id}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "config.toml"
        self.http_port, self.ws_port = free_port(), free_port()
        self.cluster_host = cluster_host
        self.cluster_address = f"{cluster_host}:{free_cluster_port(cluster_host)}"
        self.url = f"http://127.0.0.1:{self.http_port}"
        seed_list = ", ".join(f'"{s}"' for s in seeds)
        self.config.write_text(f"""
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
{timings}
{storage}
""")
        self.proc: trio.Process | None = None

    async def start(self) -> None:
        log = self.dir / "node.log"
        async with await trio.open_file(log, "ab") as out:  # the child keeps its own copy
            self.proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "node", "serve", "--config", str(self.config), "--log-level", "WARNING"],
                cwd=self.dir, stdout=out.wrapped, stderr=out.wrapped)
        await wait_until(lambda: serving(self.url, self.proc, log), 30, interval=0.05)

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


def acked(devices: Sequence[Device]) -> int:
    """How many sends of these devices were acknowledged."""
    return sum(len(d.acked) for d in devices)


async def until_acked(devices: Sequence[Device], more: int, timeout: float = 60.0) -> None:
    """Until `more` further sends of these devices are acknowledged: the load has run on."""
    goal = acked(devices) + more
    await wait_until(lambda: acked(devices) >= goal, timeout, interval=0.01)


def _name(device: Device) -> str:
    return (device.client.user or {}).get("username", "?")


async def check(devices: list[Device], chats: list[Chat], urls: list[str]) -> dict[str, Any]:
    """Wait for delivery to settle, then compare what was acked, stored and delivered."""
    stored: dict[str, list[dict[str, Any]]] = {}
    for members, chat_id in chats:
        reader_for = ChatClient(urls, token=members[0].client.token)
        stored[chat_id] = await reader_for.whole_history(chat_id)
        await reader_for.aclose()
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
        for members, chat_id in chats:
            seqs = {m["seq"] for m in stored[chat_id]}
            for device in members:
                own = {seq for chat, seq in device.acked.values() if chat == chat_id}
                gone = seqs - set(device.received.get(chat_id, ())) - own
                count += len(gone)
                if gone and detail is not None:
                    records = [m for m in stored[chat_id] if m["seq"] in gone]
                    detail.append({"user": _name(device), "chat": chat_id, "missing": sorted(gone),
                                   "sent_as": [m.get("client_msg_id") for m in records],
                                   "acked_by": [_name(d) for d in devices for m in records
                                                if m.get("client_msg_id") in d.acked],
                                   "node": device.client.base_url, "reconnects": device.conn.reconnects,
                                   "last": max(seqs), "cursor": device.client.cursors.get(chat_id)})
        return count

    with trio.move_on_after(30):  # then the report says what did not arrive
        await wait_until(lambda: not missing(), math.inf, interval=0.1)
    for members, chat_id in chats:
        for device in members:
            got = device.received.get(chat_id, [])
            duplicates += len(got) - len(set(got))
            gaps += sum(1 for x, y in itertools.pairwise(got) if y < x)  # out of order
    delivered = sum(len(d.received.get(c, [])) for members, c in chats for d in members)
    detail: list[Any] = []
    return {"stored": sum(len(v) for v in stored.values()), "delivered": delivered, "lost": lost,
            "duplicated_in_log": duplicated_in_log, "duplicate_deliveries": duplicates, "out_of_order": gaps,
            "undelivered": missing(detail), "undelivered_detail": detail}
