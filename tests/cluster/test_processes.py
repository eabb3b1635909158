"""Five real nodes as separate processes on loopback, with the default protocol timings.

Each node is ``python -m node serve --config ...`` with its own data dir and free
ports; they join through one seed. One is SIGKILLed and every survivor must mark it
failed within the bound the defaults imply; restarted, it must come back with a
higher incarnation. Only processes started here are signalled, by PID; every loop is
bounded; every address is 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import storage_toml

from node.cluster.config import ClusterConfig
from node.cluster.keyring import PURPOSE_DATAGRAM, Keyring
from node.cluster.membership import failure_detection_bound
from node.cluster.messages import Ping, encode

KEY = base64.b64encode(bytes(range(100, 132))).decode()
NODES = 5
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_cluster_port() -> int:
    """A port free for both TCP and UDP (the cluster uses the same number for both)."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port for both TCP and UDP")



pytestmark = pytest.mark.engine("postgresql")  # a cluster keeps its state in PostgreSQL

class NodeProcess:
    def __init__(self, root: Path, node_id: int, seeds: list[str]) -> None:
        self.node_id = node_id
        self.dir = root / f"n{node_id}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_tcp_port()
        self.cluster_address = f"127.0.0.1:{free_cluster_port()}"
        self.config = self.dir / "config.toml"
        seed_list = ", ".join(f'"{s}"' for s in seeds)
        self.config.write_text(
            f"""
[node]
id = {node_id}
name = "n{node_id}"
data_dir = "data"
[http]
port = {self.http_port}
graceful_timeout = 2.0
[websocket]
port = {free_tcp_port()}
[accounts]
argon2_time_cost = 1
argon2_memory_kib = 64
[cluster]
enabled = true
bind_host = "127.0.0.1"
bind_port = {self.cluster_address.rsplit(":", 1)[1]}
seeds = [{seed_list}]
keys = ["{KEY}"]
{storage_toml(root / "cluster-db")}
"""
        )
        self.proc: trio.Process | None = None
        self.url = f"http://127.0.0.1:{self.http_port}"

    async def start(self) -> None:
        self.proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "node", "serve", "--config", str(self.config), "--log-level", "WARNING"],
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=self._log_file(),
        )
        with trio.fail_after(30):
            while await self.view() is None:
                assert self.proc.poll() is None, f"node {self.node_id} exited: {self.stderr()[-2000:]}"
                await trio.sleep(0.1)

    def _log_file(self):
        return open(self.dir / "stderr.log", "ab")

    def stderr(self) -> str:
        return (self.dir / "stderr.log").read_text(errors="replace")

    async def view(self) -> dict[str, Any] | None:
        try:
            async with httpx.AsyncClient(timeout=2.0) as http:
                response = await http.get(f"{self.url}/api/admin/cluster/members")
        except httpx.TransportError:
            return None
        return response.json() if response.status_code == 200 else None

    async def states(self) -> dict[int, tuple[str, int]]:
        view = await self.view()
        return {m["node_id"]: (m["state"], m["incarnation"]) for m in view["members"]} if view else {}

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(15):
            await self.proc.wait()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()


async def wait_until(check, timeout: float, step: float = 0.2):
    with trio.fail_after(timeout):
        while True:
            result = await check()
            if result:
                return result
            await trio.sleep(step)


async def test_five_processes_detect_a_sigkill_and_take_the_node_back(tmp_path):
    seed = NodeProcess(tmp_path, 1, [])
    nodes = [seed] + [NodeProcess(tmp_path, i, [seed.cluster_address]) for i in range(2, NODES + 1)]
    try:
        await seed.start()
        async with trio.open_nursery() as nursery:
            for n in nodes[1:]:
                nursery.start_soon(n.start)

        async def all_joined() -> bool:
            for n in nodes:
                states = await n.states()
                if sorted(i for i, (s, _) in states.items() if s == "alive") != list(range(1, NODES + 1)):
                    return False
            return True

        await wait_until(all_joined, timeout=30)

        # SIGKILL one member: every survivor must mark it failed within the bound
        victim = nodes[2]
        old_incarnation = (await seed.states())[victim.node_id][1]
        survivors = [n for n in nodes if n is not victim]
        victim.kill()
        killed_at = trio.current_time()
        await victim.proc.wait()
        bound = failure_detection_bound(ClusterConfig(), NODES)
        detected: dict[int, float] = {}
        with trio.fail_after(bound + 5):
            while len(detected) < len(survivors):
                for n in survivors:
                    if n.node_id not in detected and (await n.states()).get(victim.node_id, ("",))[0] == "failed":
                        detected[n.node_id] = trio.current_time() - killed_at
                await trio.sleep(0.1)
        assert max(detected.values()) <= bound, detected

        # restart it: it refutes its old death with a higher incarnation and everyone takes it back
        await victim.start()

        async def rejoined() -> bool:
            for n in nodes:
                state, incarnation = (await n.states()).get(victim.node_id, ("", -1))
                if state != "alive" or incarnation <= old_incarnation:
                    return False
            return True

        await wait_until(rejoined, timeout=30)

        # a datagram under a wrong key is dropped and counted; the seed carries on
        before = (await seed.view())["statistics"]["dropped_unauthenticated"]
        packet = Keyring([bytes(32)]).seal(encode([Ping(1, seed.node_id, "127.0.0.1:9")]), PURPOSE_DATAGRAM)
        host, port = seed.cluster_address.rsplit(":", 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(packet, (host, int(port)))

        async def counted() -> bool:
            return (await seed.view())["statistics"]["dropped_unauthenticated"] > before

        await wait_until(counted, timeout=10)
        assert seed.proc.poll() is None

        # the command-line view of the same table
        out = await trio.run_process(
            [sys.executable, "-m", "node", "cluster", "members", "--config", str(seed.config)],
            capture_stdout=True, capture_stderr=True,
        )  # fmt: skip
        listing = out.stdout.decode()
        assert listing.count(" alive ") == NODES, listing

        ARTIFACTS.mkdir(exist_ok=True)
        figures = {
            "nodes": NODES,
            "detection_seconds": detected,
            "median": statistics.median(detected.values()),
            "max": max(detected.values()),
            "bound": bound,
        }
        (ARTIFACTS / "cluster_process_detection.json").write_text(json.dumps(figures, indent=2))
        print(f"\nreal-process detection: {figures}")
    finally:
        with trio.CancelScope(shield=True):
            for n in nodes:
                await n.stop()


async def test_a_process_whose_node_id_is_taken_fails_start_up_with_one_clear_message(tmp_path):
    seed = NodeProcess(tmp_path, 1, [])
    twin = NodeProcess(tmp_path / "twin", 1, [seed.cluster_address])
    try:
        await seed.start()
        with trio.fail_after(30):
            result = await trio.run_process(
                [sys.executable, "-m", "node", "serve", "--config", str(twin.config), "--log-level", "WARNING"],
                cwd=twin.dir, capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
        assert result.returncode != 0
        err = result.stderr.decode()
        expected = (
            f"chatnode: cluster: node id 1 is already used by live member 'n1' at {seed.cluster_address}; "
            "give this node a different [node] id"
        )
        assert err.strip().splitlines() == [expected]
        assert (await seed.states())[1] == ("alive", 0)  # the seed never had to refute anything
    finally:
        with trio.CancelScope(shield=True):
            await seed.stop()
