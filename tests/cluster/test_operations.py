"""Operating a cluster: `chatnode cluster members`, `GET /api/admin/cluster/members`, the
cluster part of `chatnode admin stats` and the cluster's figures in /metrics, read from a
real three-node cluster after real traffic (docs/admin.md, "The cluster"; docs/operations.md,
"Metrics").

Every figure is checked against what the test itself did: which node owns each chat
(rendezvous hashing, read from the nodes), which device is connected where, which sends
went through a node that does not own their chat. A peer that stops answering (SIGSTOP of
a real `chatnode serve` process) is shown as such within the timeout.
"""

from __future__ import annotations

import io
import json
import re
import signal
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import running_node, storage_toml
from harness import KEY as PROCESS_KEY
from harness import NodeProcess
from prometheus_client.parser import text_string_to_metric_families
from threenodes import Cluster, node_config, start_cluster, until

from node.admin_cli import run_admin
from node.cli import _parser
from node.cluster.cli import format_members, run_cluster_command
from node.testing import wait_until

pytestmark = pytest.mark.engine("postgresql")  # a cluster keeps its state in PostgreSQL

TOKEN = "operations-admin-token-0123456789abcdef"  # the minimum is 32 characters
ADMIN = {"admin": {"token": TOKEN}}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def members_view(node, **params: str) -> dict[str, Any]:
    async with httpx.AsyncClient(headers=AUTH, timeout=30) as http:
        response = await http.get(f"{node.http_url}/api/admin/cluster/members", params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def scrape(node) -> dict[str, list]:
    async with httpx.AsyncClient(headers=AUTH, timeout=30) as http:
        response = await http.get(f"{node.http_url}/metrics")
    assert response.status_code == 200
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def cluster_panel_metrics() -> set[str]:
    """The metrics the Grafana dashboard's cluster panels query."""
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "contrib" / "grafana-dashboard.json").read_text())
    queried = {name for panel in dashboard["panels"] if panel["title"].startswith("Cluster: ")
               for target in panel["targets"] for name in re.findall(r"\bchatnode_[a-z_]+", target["expr"])}
    assert "chatnode_cluster_forward_seconds_bucket" in queried
    return queried


def sample(metrics: dict[str, list], family: str, suffix: str = "", **labels: str) -> float:
    return sum(s.value for s in metrics.get(family, []) if s.name == family + suffix
               and all(s.labels.get(k) == v for k, v in labels.items()))


async def cluster_command(node, *argv: str) -> str:
    """`chatnode cluster members ...` against `node`, as the command line runs it (its
    blocking HTTP call in a worker thread: the nodes run on this event loop)."""
    args = _parser().parse_args(["cluster", "members", "--url", node.http_url, *argv])
    out = io.StringIO()
    assert await trio.to_thread.run_sync(run_cluster_command, args, node.config, out) == 0
    return out.getvalue()


async def admin_stats(node, *argv: str) -> str:
    args = _parser().parse_args(["admin", "--url", node.http_url, "stats", *argv])
    out = io.StringIO()
    assert await run_admin(args, node.config, out) == 0
    return out.getvalue()


async def test_members_shows_what_each_node_sequences_serves_and_queues(tmp_path):
    async with AsyncExitStack() as stack:
        cluster = await start_cluster(stack, tmp_path, **ADMIN)
        nodes = cluster.nodes
        ids = [n.config.node.id for n in nodes]
        users = [await cluster.user(nodes[i % 3], f"u{i}") for i in range(6)]
        chats = [(await users[i].open_direct(username=users[(i + 1) % 6].user["username"]))["id"] for i in range(6)]
        chats.append((await users[0].create_group("all", members=[u.user["id"] for u in users[1:]]))["id"])
        owners = {chat: cluster.owner(chat) for chat in chats}
        assert len({o.config.node.id for o in owners.values()}) > 1, "the chats should spread over the nodes"

        # devices: user i on node i % 3, and one more for user 0 on every node
        placed = [(nodes[i % 3], users[i]) for i in range(6)]
        placed += [(node, await cluster.login(node, users[0], f"extra{j}")) for j, node in enumerate(nodes)]
        devices = {n.config.node.id: 0 for n in nodes}
        forwarded_sends = {n.config.node.id: 0 for n in nodes}
        async with AsyncExitStack() as conns:
            connections = []
            for node, client in placed:
                conn = await conns.enter_async_context(client.connect())
                await conn.synced.wait()
                connections.append((node, client, conn))
                devices[node.config.node.id] += 1
            for chat in chats:
                members = [(n, c) for n, c in placed[:6]
                           if chat in [ch["id"] for ch in await c.chats()]]
                await cluster.subscribed(chat, *members)
            # every device sends in each of its chats
            for node, client, conn in connections:
                for chat in [c["id"] for c in await client.chats()]:
                    await conn.send_text(chat, f"from {node.config.node.id}")
                    if owners[chat] is not node:
                        forwarded_sends[node.config.node.id] += 1
            assert all(forwarded_sends.values()), forwarded_sends  # every node forwarded some

            def quiet() -> bool:  # every forwarded request answered, every link drained
                return all(not n.routing._pending and not any(n.routing.links.queued(p) for p in ids)
                           for n in nodes)

            await wait_until(quiet, 15)

            async with httpx.AsyncClient() as http:  # the admin token, as on every admin route
                for url in (f"{nodes[0].http_url}/api/admin/cluster/members", f"{nodes[0].http_url}/metrics"):
                    assert (await http.get(url)).status_code == 401
            view = await members_view(nodes[0])
            assert view["node_id"] == ids[0] and view["ownership"] == {"members": ids, "chats": len(chats)}
            rows = {m["node_id"]: m for m in view["members"]}
            assert {i: rows[i]["reply"] for i in ids} == {ids[0]: "self", ids[1]: "answered", ids[2]: "answered"}
            for node in nodes:
                row = rows[node.config.node.id]
                owned = sum(1 for o in owners.values() if o is node)
                # each owner created and sequenced its chats: it holds state for exactly those
                assert row["chats_expected"] == owned, (node.config.node.id, row)
                assert row["chats_sequenced"] == owned, (node.config.node.id, row)
                assert row["devices"] == devices[node.config.node.id]
                assert row["users_online"] == len({c.user["id"] for n, c in placed if n is node})
                assert row["view"] == ids and row["leaving"] is False
                assert set(row["links"]) == {str(i) for i in ids if i != node.config.node.id}
                if node is nodes[0]:
                    assert row["link"] is None and row["rtt_ms"] is None
                else:
                    assert row["link"]["connected"] is True and row["link"]["queued"] == 0
                    assert row["link"]["in_flight"] == 0 and row["link"]["sent"] > 0
                    assert 0 < row["rtt_ms"] < 2000
            assert sum(r["chats_expected"] for r in rows.values()) == len(chats)

            # the command: a table for people, the same JSON for scripts
            table = await cluster_command(nodes[1])
            lines = table.splitlines()
            assert lines[0].split() == ["NODE", "NAME", "STATE", "INC", "ADDRESS", "CHATS", "OWN", "DEVICES",
                                        "QUEUE", "FLIGHT", "RTT", "AGE"]
            mine = next(line for line in lines if line.startswith("*"))
            assert mine.split()[1:3] == [str(ids[1]), "n2"]
            for node in nodes:
                cells = next(line for line in lines[1:4] if line.lstrip("* ").split()[0] == str(node.config.node.id))
                owned = sum(1 for o in owners.values() if o is node)
                assert cells.lstrip("* ").split()[5:8] == [str(owned), str(owned), str(devices[node.config.node.id])]
            assert f"{len(chats)} chats stored" in table
            as_json = json.loads(await cluster_command(nodes[2], "--json", "--no-expected"))
            assert as_json["node_id"] == ids[2] and "chats_expected" not in as_json["members"][0]
            assert [m["reply"] for m in as_json["members"]] == ["answered", "answered", "self"]

            # `chatnode admin stats`: the node's counters and the cluster, the same figures
            stats = await admin_stats(nodes[0])
            assert "DEVICES" in stats and "RTT" in stats
            full = json.loads(await admin_stats(nodes[0], "--json", "--counts"))
            assert {m["node_id"]: m["chats_expected"] for m in full["cluster"]["members"]} == {
                i: rows[i]["chats_expected"] for i in ids}
            assert [m["reply"] for m in full["cluster"]["members"]] == ["self", "answered", "answered"]

            # /metrics: operations forwarded to owners, by kind, and each one's answer timed
            for node in nodes:
                metrics = await scrape(node)
                me = node.config.node.id
                assert sample(metrics, "chatnode_cluster_forwarded", "_total", kind="SendMessage") == forwarded_sends[me]
                awaited = sum(s.value for s in metrics["chatnode_cluster_forwarded"]
                              if s.name.endswith("_total") and s.labels["kind"] != "MarkDelivered")
                assert sample(metrics, "chatnode_cluster_forward_seconds", "_count") == awaited
                for peer in (i for i in ids if i != me):
                    assert sample(metrics, "chatnode_cluster_link_queued", peer=str(peer)) == 0
                    assert sample(metrics, "chatnode_cluster_link_in_flight", peer=str(peer)) == 0
                    assert sample(metrics, "chatnode_cluster_link_connected", peer=str(peer)) == 1
                    assert sample(metrics, "chatnode_cluster_link_sent", "_total", peer=str(peer)) > 0
                assert "chatnode_cluster_ownership_moves" in metrics
                # subscription work put off while storage refused (docs/cluster-postgresql.md)
                assert "chatnode_routing_deferred_for_storage" in metrics
                assert sample(metrics, "chatnode_routing_deferred_for_storage") == 0
                # the dashboard's cluster panels query only what a clustered node exports
                exported = set(metrics) | {s.name for samples in metrics.values() for s in samples}
                assert cluster_panel_metrics() <= exported, sorted(cluster_panel_metrics() - exported)
                # the same figures are not repeated as gauges named per peer
                assert not [name for name in metrics if name.startswith("chatnode_routing_links_peers")]
                assert "chatnode_routing_forwarded" not in metrics


async def test_a_member_leaving_moves_its_chats_and_the_view_follows(tmp_path):
    """n3 stops politely: n1 counts exactly the chats n3 owned that n1's devices follow as
    moved, shows n3 as left (not asked), and the chats it should own grow to cover them."""
    async with AsyncExitStack() as stack:
        n1 = await stack.enter_async_context(running_node(node_config(tmp_path, 1, [], ADMIN)))
        seed = [n1.cluster.address]
        n2 = await stack.enter_async_context(running_node(node_config(tmp_path, 2, seed, ADMIN)))
        async with running_node(node_config(tmp_path, 3, seed, ADMIN)) as n3:
            nodes = [n1, n2, n3]
            await until(lambda: all(len(n.routing.ownership.members) == 3 for n in nodes))
            cluster = Cluster(nodes)
            stack.push_async_callback(cluster.aclose)
            users = [await cluster.user(n2, "member")]
            chats: list[str] = []
            # chats of users[0] until some, and not all, belong to n3
            while len(chats) < 6 or not 0 < sum(cluster.owner(c) is n3 for c in chats) < len(chats):
                users.append(await cluster.user(n2, "member"))
                chats.append((await users[0].open_direct(username=users[-1].user["username"]))["id"])
            on_n1 = await cluster.login(n1, users[0])
            moved = [c for c in chats if cluster.owner(c) is n3]
            async with on_n1.connect() as conn:
                await conn.synced.wait()
                await cluster.subscribed(chats[0], (n1, users[0]))
                await until(lambda: len(n1.routing._local_chats.get(int(users[0].user["id"]), ())) == len(chats))
                before = sample(await scrape(n1), "chatnode_cluster_ownership_moves", "_total")
                n3.request_shutdown()

                async def moves() -> float:
                    return sample(await scrape(n1), "chatnode_cluster_ownership_moves", "_total")

                async def counted() -> bool:
                    return await moves() != before

                await wait_until(counted, 20, interval=0.05)
                assert await moves() - before == len(moved)
        await until(lambda: n1.cluster.membership.member(3).state == "left")
        view = await members_view(n1)
        rows = {m["node_id"]: m for m in view["members"]}
        assert rows[3]["state"] == "left" and rows[3]["reply"] == "not asked" and rows[3]["chats_sequenced"] is None
        assert rows[3]["chats_expected"] == 0 and rows[3]["link"] is None
        assert rows[1]["chats_expected"] + rows[2]["chats_expected"] == len(chats)
        assert view["ownership"]["members"] == [1, 2]
        assert "not asked" not in format_members(view)  # shown as '-' in the table


async def test_a_peer_that_does_not_answer_is_shown_so_and_holds_nothing_up(tmp_path):
    """Two nodes in this process and a third as a real `chatnode serve` process. Frozen
    with SIGSTOP, it is still a member (suspicion takes seconds) but cannot answer: the
    view comes back within the timeout with it marked "no answer", the others' figures
    complete, and nothing of the question stays pending. Thawed, it answers again."""
    # membership slow to give up on a member (suspicion >= 6 s), so the frozen one stays live
    patient = {"cluster": {"keys": [PROCESS_KEY], "probe_interval": 1.0, "probe_timeout": 0.5, "suspicion_mult": 6}}
    async with AsyncExitStack() as stack:
        n1 = await stack.enter_async_context(running_node(node_config(tmp_path, 1, [], patient)))
        n2 = await stack.enter_async_context(running_node(node_config(tmp_path, 2, [n1.cluster.address], patient)))
        third = NodeProcess(tmp_path, 3, [n1.cluster.address], storage_toml(tmp_path / "cluster-db"))
        stack.push_async_callback(third.stop)
        await third.start()
        await until(lambda: all(len(n.routing.ownership.members) == 3 for n in (n1, n2)), 30)
        view = await members_view(n1, timeout_ms="5000")
        assert [m["reply"] for m in view["members"]] == ["self", "answered", "answered"]

        assert third.proc is not None
        third.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            view = await members_view(n1, timeout_ms="700")
            took = time.monotonic() - started
            rows = {m["node_id"]: m for m in view["members"]}
            assert rows[3]["state"] in ("alive", "suspect"), rows[3]
            assert rows[3]["reply"] == "no answer" and rows[3]["chats_sequenced"] is None
            assert rows[3]["rtt_ms"] is None and rows[3]["link"] is not None
            assert rows[2]["reply"] == "answered" and rows[2]["chats_sequenced"] is not None
            assert 0.7 <= took < 3.0, took
            assert not n1.routing._pending  # the unanswered question was given up, not left waiting
            table = format_members(view)
            assert "no answer" in next(line for line in table.splitlines() if line.split()[0] == "3")
        finally:
            third.proc.send_signal(signal.SIGCONT)

        # thawed: it answers again, and the real command line reads it
        async def all_answer() -> bool:
            view = await members_view(n1, timeout_ms="2000")
            return [m["reply"] for m in view["members"]] == ["self", "answered", "answered"]

        await wait_until(all_answer, 20)
        result = await trio.run_process(
            [sys.executable, "-m", "node", "cluster", "members", "--url", n2.http_url, "--json"],
            cwd=third.dir, capture_stdout=True, capture_stderr=True, check=False)
        assert result.returncode == 0, result.stderr.decode()
        answered = json.loads(result.stdout)
        assert answered["node_id"] == 2 and [m["reply"] for m in answered["members"]] == ["answered", "self", "answered"]


async def test_members_takes_the_admin_token_as_chatnode_admin_does(tmp_path, monkeypatch, capsys):
    """`--token`, then $CHATNODE_ADMIN_TOKEN, then the config's token; without one a node
    that has a token refuses, and the message says where the token goes. A peer timeout
    out of range is refused before anything is asked."""
    import attrs

    async with running_node(node_config(tmp_path, 1, [], ADMIN)) as node:
        tokenless = attrs.evolve(node.config, admin=attrs.evolve(node.config.admin, token=""))

        def members(*argv: str) -> int:
            args = _parser().parse_args(["cluster", "members", "--url", node.http_url, *argv])
            return run_cluster_command(args, tokenless, io.StringIO())

        monkeypatch.delenv("CHATNODE_ADMIN_TOKEN", raising=False)
        assert await trio.to_thread.run_sync(members) == 1
        err = capsys.readouterr().err
        assert "answered 401" in err and "--token" in err, err
        assert await trio.to_thread.run_sync(members, "--token", TOKEN) == 0
        monkeypatch.setenv("CHATNODE_ADMIN_TOKEN", TOKEN)
        assert await trio.to_thread.run_sync(members) == 0
        assert await trio.to_thread.run_sync(members, "--token", "wrong") == 1

        # without --url: where the config says the node listens (not its public URL), as
        # `chatnode admin` does; a config without a fixed port cannot say
        port = int(node.http_url.rsplit(":", 1)[1])
        proxied = attrs.evolve(node.config, http=attrs.evolve(node.config.http, port=port,
                                                             public_url="https://chat.invalid"))
        local = _parser().parse_args(["cluster", "members"])
        assert await trio.to_thread.run_sync(run_cluster_command, local, proxied, io.StringIO()) == 0
        unfixed = attrs.evolve(node.config, http=attrs.evolve(node.config.http, port=0))
        assert await trio.to_thread.run_sync(run_cluster_command, local, unfixed, io.StringIO()) == 2
        assert "no fixed http.port" in capsys.readouterr().err
    for bad in ("0", "31", "soon"):
        with pytest.raises(SystemExit) as exit_info:
            _parser().parse_args(["cluster", "members", "--peer-timeout", bad])
        assert exit_info.value.code == 2
