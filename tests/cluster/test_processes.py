"""Five real nodes as separate processes on loopback, with the default protocol timings.

Each node is ``python -m node serve --config ...`` with its own data dir and free
ports; they join through one seed. One is SIGKILLed and every survivor must mark it
failed within the bound the defaults imply; restarted, it must come back with a
higher incarnation. Only processes started here are signalled, by PID; every loop is
bounded; every address is 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import storage_toml
from harness import NodeProcess

from node.cluster.config import ClusterConfig
from node.cluster.keyring import PURPOSE_DATAGRAM, Keyring
from node.cluster.membership import failure_detection_bound
from node.cluster.messages import Ping, encode
from node.testing import wait_until

pytestmark = pytest.mark.engine("postgresql")  # a cluster keeps its state in PostgreSQL

NODES = 5
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def member(root: Path, node_id: int, seeds: list[str]) -> NodeProcess:
    """A node of this test's cluster, with the default protocol timings."""
    return NodeProcess(root, node_id, seeds, storage_toml(root / "cluster-db"), timings="")


async def view(node: NodeProcess) -> dict[str, Any] | None:
    """The node's members view (GET /api/admin/cluster/members), None while it does not answer."""
    try:
        async with httpx.AsyncClient(timeout=2.0) as http:
            response = await http.get(f"{node.url}/api/admin/cluster/members")
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


async def states(node: NodeProcess) -> dict[int, tuple[str, int]]:
    found = await view(node)
    return {m["node_id"]: (m["state"], m["incarnation"]) for m in found["members"]} if found else {}


async def test_five_processes_detect_a_sigkill_and_take_the_node_back(tmp_path):
    seed = member(tmp_path, 1, [])
    nodes = [seed] + [member(tmp_path, i, [seed.cluster_address]) for i in range(2, NODES + 1)]
    try:
        await seed.start()
        async with trio.open_nursery() as nursery:
            for n in nodes[1:]:
                nursery.start_soon(n.start)

        async def all_joined() -> bool:
            for n in nodes:
                alive = sorted(i for i, (state, _) in (await states(n)).items() if state == "alive")
                if alive != list(range(1, NODES + 1)):
                    return False
            return True

        await wait_until(all_joined, 30, interval=0.2)

        # SIGKILL one member: every survivor must mark it failed within the bound
        victim = nodes[2]
        old_incarnation = (await states(seed))[victim.node_id][1]
        survivors = [n for n in nodes if n is not victim]
        victim.kill()
        killed_at = trio.current_time()
        await victim.proc.wait()
        bound = failure_detection_bound(ClusterConfig(), NODES)
        detected: dict[int, float] = {}

        async def all_detected() -> bool:  # noting when each survivor did
            for n in survivors:
                if n.node_id not in detected and (await states(n)).get(victim.node_id, ("",))[0] == "failed":
                    detected[n.node_id] = trio.current_time() - killed_at
            return len(detected) == len(survivors)

        await wait_until(all_detected, bound + 5, interval=0.1)
        assert max(detected.values()) <= bound, detected

        # restart it: it refutes its old death with a higher incarnation and everyone takes it back
        await victim.start()

        async def rejoined() -> bool:
            for n in nodes:
                state, incarnation = (await states(n)).get(victim.node_id, ("", -1))
                if state != "alive" or incarnation <= old_incarnation:
                    return False
            return True

        await wait_until(rejoined, 30, interval=0.2)

        # a datagram under a wrong key is dropped and counted; the seed carries on
        before = (await view(seed))["statistics"]["dropped_unauthenticated"]
        packet = Keyring([bytes(32)]).seal(encode([Ping(1, seed.node_id, "127.0.0.1:9")]), PURPOSE_DATAGRAM)
        host, port = seed.cluster_address.rsplit(":", 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(packet, (host, int(port)))

        async def counted() -> bool:
            return (await view(seed))["statistics"]["dropped_unauthenticated"] > before

        await wait_until(counted, 10, interval=0.2)
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
    seed = member(tmp_path, 1, [])
    twin = member(tmp_path / "twin", 1, [seed.cluster_address])
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
        assert (await states(seed))[1] == ("alive", 0)  # the seed never had to refute anything
    finally:
        with trio.CancelScope(shield=True):
            await seed.stop()
