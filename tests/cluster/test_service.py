"""Cluster membership inside real nodes (serve_node), on loopback UDP and TCP, one process.

Real sockets and real time: no autojump here. Protocol timings are shortened so the
tests take seconds; the multi-process test runs the defaults.
"""

from __future__ import annotations

import base64
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import cluster_storage, make_config, running_node

from node.app import serve_node
from node.cluster.cli import format_members
from node.cluster.keyring import PURPOSE_DATAGRAM, Keyring
from node.cluster.messages import Ping, encode
from node.cluster.service import ClusterStartError
from node.testing import wait_until

KEY = base64.b64encode(bytes(range(32))).decode()
FAST = {
    "probe_interval": 0.2,
    "probe_timeout": 0.08,
    "gossip_interval": 0.05,
    "suspicion_mult": 3,
    "push_pull_interval": 2.0,
    "reconnect_interval": 2.0,
    "leave_timeout": 1.0,
}


pytestmark = pytest.mark.engine("postgresql")  # a cluster keeps its state in PostgreSQL


def cluster_config(tmp_path: Path, name: str, node_id: int, seeds: list[str], **extra: Any):
    return make_config(
        tmp_path / name,
        node={"data_dir": str(tmp_path / name / "data"), "id": node_id, "name": name},
        cluster={"enabled": True, "bind_port": 0, "seeds": seeds, "keys": [KEY], **FAST, **extra},
        storage=cluster_storage(tmp_path),
    )


async def members_view(node) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{node.http_url}/api/admin/cluster/members")
    assert response.status_code == 200
    return response.json()


async def test_three_nodes_join_and_the_admin_endpoint_lists_them(tmp_path):
    with trio.fail_after(30):
        async with running_node(cluster_config(tmp_path, "a", 1, [])) as a:
            seed = [a.cluster.address]
            async with running_node(cluster_config(tmp_path, "b", 2, seed)) as b:
                async with running_node(cluster_config(tmp_path, "c", 3, seed)) as c:
                    nodes = (a, b, c)
                    await wait_until(lambda: all(len(n.cluster.membership.live_members()) == 3 for n in nodes))
                    # the HTTP URL (port 0 at start) is announced once the listener has it
                    await wait_until(lambda: a.cluster.membership.member(3).http_url == c.http_url)
                    await wait_until(lambda: a.cluster.membership.stats["acks_received"] > 0)
                    view = await members_view(a)
                    assert view["enabled"] and view["encrypted"] and view["node_id"] == 1
                    rows = {m["node_id"]: m for m in view["members"]}
                    assert {i: r["state"] for i, r in rows.items()} == {1: "alive", 2: "alive", 3: "alive"}
                    assert rows[1]["self"] and rows[2]["address"] == b.cluster.address
                    assert view["statistics"]["probes"] > 0
                    replayed = []
                    a.cluster.add_listener(replayed.append, replay=True)
                    assert sorted((e.kind, e.member.node) for e in replayed) == [("joined", 2), ("joined", 3)]
                    table = format_members(view)
                    assert "alive" in table and b.cluster.address in table
                # c shut down gracefully: it left, it did not fail
                await wait_until(lambda: a.cluster.membership.member(3).state == "left")
                assert a.cluster.membership.statistics()["failures"] == 0


async def test_a_node_id_taken_by_a_live_member_stops_start_up(tmp_path):
    with trio.fail_after(30):
        async with running_node(cluster_config(tmp_path, "a", 7, [])) as a:
            twin = cluster_config(tmp_path, "twin", 7, [a.cluster.address])
            refusal = pytest.RaisesExc(ClusterStartError, match="node id 7 is already used by live member 'a'")
            with pytest.RaisesGroup(refusal, flatten_subgroups=True):
                async with trio.open_nursery() as nursery:
                    await nursery.start(serve_node, twin)
            assert a.cluster.membership.member(7).address == a.cluster.address


async def test_wrong_key_and_garbage_are_dropped_and_counted(tmp_path):
    with trio.fail_after(30):
        async with running_node(cluster_config(tmp_path, "a", 1, [])) as a:
            host, port = a.cluster.address.rsplit(":", 1)
            wrong = Keyring([bytes(32)]).seal(encode([Ping(1, 1, "127.0.0.1:9")]), PURPOSE_DATAGRAM)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(wrong, (host, int(port)))
                s.sendto(b"\x00not msgpack", (host, int(port)))
                s.sendto(b"", (host, int(port)))
            stats = a.cluster.membership.stats
            await wait_until(lambda: stats["dropped_unauthenticated"] >= 3, timeout=5)
            assert stats["dropped_packets"] >= 3
            assert (await members_view(a))["statistics"]["dropped_unauthenticated"] >= 3


async def test_without_a_key_the_cluster_stays_on_loopback_and_says_so(tmp_path, caplog):
    config = make_config(tmp_path, cluster={"enabled": True, "bind_port": 0})
    with trio.fail_after(30):
        async with running_node(config) as a:
            assert a.cluster.address.startswith("127.0.0.1:")
            assert not a.cluster.membership.keyring.encrypted
    assert any("stays on loopback" in r.getMessage() for r in caplog.records)


async def test_admin_endpoint_without_clustering(tmp_path):
    with trio.fail_after(30):
        async with running_node(make_config(tmp_path)) as node:
            view = await members_view(node)
            assert view == {"enabled": False, "members": [], "statistics": {}}
            assert "clustering is off" in format_members(view)


async def test_held_idle_connections_do_not_keep_a_new_member_out(tmp_path):
    """Anyone can open TCP connections to the cluster port and send nothing; 80 of them
    held open must not keep a new member from joining (docs/cluster.md, "Security")."""
    config = cluster_config(tmp_path, "a", 1, [], stream_timeout=20.0)
    with trio.fail_after(40):
        async with running_node(config) as a:
            host, port = a.cluster.address.rsplit(":", 1)
            held = [await trio.open_tcp_stream(host, int(port)) for _ in range(80)]
            try:
                # well before stream_timeout would free a place
                async with running_node(cluster_config(tmp_path, "b", 2, [a.cluster.address])) as b:
                    await wait_until(lambda: len(b.cluster.membership.live_members()) == 2, timeout=5)
                    assert b.cluster.membership.stats["joins"] >= 1
                assert a.cluster.statistics()["streams_evicted"] >= 80 - 32
            finally:
                for stream in held:
                    await stream.aclose()
