"""The histograms and counters of /metrics (node/observe.py, docs/operations.md "Metrics"),
read from a real node after real traffic, on both engines; and the Grafana dashboard
built on them."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from conftest import close_code, new_user
from prometheus_client.parser import text_string_to_metric_families

from node.client import ChatClient, ClientError
from node.observe import COUNTS, SECONDS, Histogram

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "contrib" / "grafana-dashboard.json"
HISTOGRAMS = ("chatnode_send_ack_seconds", "chatnode_storage_commit_seconds", "chatnode_storage_commit_ops",
              "chatnode_sequencer_batch_operations", "chatnode_fan_out_seconds", "chatnode_ws_queue_depth",
              "chatnode_http_request_seconds")


async def scrape(node) -> dict[str, list]:
    """/metrics, parsed: family name -> samples (name, labels, value)."""
    async with ChatClient(node.http_url) as client:
        response = await client._http.get("/metrics")
    assert response.status_code == 200
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def histogram(samples: list, **labels: str) -> tuple[dict[float, float], float, float]:
    """(cumulative buckets by upper bound, count, sum) of one histogram's samples."""
    mine = [s for s in samples if all(s.labels.get(k) == v for k, v in labels.items())]
    buckets = {float(s.labels["le"]): s.value for s in mine if s.name.endswith("_bucket")}
    count = next(s.value for s in mine if s.name.endswith("_count"))
    total = next(s.value for s in mine if s.name.endswith("_sum"))
    values = [buckets[b] for b in sorted(buckets)]
    assert values == sorted(values) and buckets[math.inf] == count, "buckets are cumulative up to the count"
    return buckets, count, total


def counter(samples: list, **labels: str) -> float:
    return sum(s.value for s in samples if s.name.endswith("_total")
               and all(s.labels.get(k) == v for k, v in labels.items()))


async def test_after_traffic_the_histograms_have_plausible_counts(node):
    alice, bob, carol = await new_user(node, "alice"), await new_user(node, "bob"), await new_user(node, "carol")
    direct = await alice.open_direct(username="bob")
    group = await alice.create_group("three", usernames=["bob", "carol"])
    before = await scrape(node)
    async with alice.connect() as a, bob.connect() as b, carol.connect() as c:
        for conn in (a, b, c):
            await conn.synced.wait()
        acks = await a.send_many([{"chat": direct["id"], "text": f"1-1 {i}"} for i in range(30)])
        acks += [await a.send_text(group["id"], f"group {i}") for i in range(10)]
        await b.wait_for("message", text="1-1 29")
        await c.wait_for("message", text="group 9")
        with pytest.raises(ClientError):  # an error over the chat socket
            await a.send_text("12345", "to no chat")
    await bob.history(direct["id"])  # a route with an id in it
    await bob.history(group["id"])
    async with ChatClient(node.http_url) as stranger:
        assert (await stranger._http.get("/api/no/such/route")).status_code == 404
    async with carol.connect() as c:
        await c.synced.wait()
        await carol.logout()  # the node closes carol's socket with 4003
        assert await close_code(c) == 4003
    after = await scrape(node)
    assert len(acks) == 40

    _, sent, took = histogram(after["chatnode_send_ack_seconds"])
    assert sent == histogram(before["chatnode_send_ack_seconds"])[1] + 40  # the refused send is not timed
    assert 0 < took / sent < 5.0

    def gauge(metrics: dict, name: str) -> float:
        return metrics[name][0].value

    def delta(name: str, part: int) -> float:
        return histogram(after[name])[part] - histogram(before[name])[part]

    commits = delta("chatnode_storage_commit_seconds", 1)  # every commit since the first scrape ...
    assert commits == gauge(after, "chatnode_storage_commits") - gauge(before, "chatnode_storage_commits")
    assert 0 < delta("chatnode_storage_commit_seconds", 2) / commits < 5.0
    assert delta("chatnode_storage_commit_ops", 2) == (  # ... and every write op in them
        gauge(after, "chatnode_storage_committed_ops") - gauge(before, "chatnode_storage_committed_ops"))

    batches, operations = delta("chatnode_sequencer_batch_operations", 1), delta("chatnode_sequencer_batch_operations", 2)
    assert operations >= 40
    assert batches < operations  # the sends of one frame went in one batch
    assert delta("chatnode_fan_out_seconds", 1) == batches

    buckets, frames, events = histogram(after["chatnode_ws_queue_depth"])
    assert frames >= 10 and events >= frames and buckets[1024.0] == frames  # never past the queue's size

    http = after["chatnode_http_request_seconds"]
    assert histogram(http, method="POST", route="/api/login")[1] >= 3
    assert histogram(http, method="GET", route="/api/chats/<chat_id>/messages")[1] == 2
    assert histogram(http, method="GET", route="unmatched")[1] == 1
    assert not [s for s in http if re.search(r"\d{6}", s.labels["route"])], "a route label holds an id"

    errors = after["chatnode_errors"]
    assert counter(errors, code="not_found", transport="http") == 1
    assert counter(errors, code="not_member", transport="ws") == 1
    closes = after["chatnode_ws_closes"]
    assert counter(closes, code="4003") == 1
    assert counter(closes, code="1000") >= 3  # the clients' own closes
    for client in (alice, bob, carol):
        await client.aclose()


async def test_a_fresh_node_shows_every_histogram_empty(node):
    """Empty but for the node's own start-up writes (its keys settle in storage, some
    before the histograms observe): nothing is observed before a client does something."""
    metrics = await scrape(node)
    start_up_commits = metrics["chatnode_storage_commits"][0].value
    for name in HISTOGRAMS[:-1]:
        buckets, count, _ = histogram(metrics[name])
        most = start_up_commits if name.startswith("chatnode_storage_commit_") else 0
        assert count <= most and len(buckets) == len(SECONDS if name.endswith("seconds") else COUNTS) + 1
    assert "chatnode_errors" in metrics and "chatnode_ws_closes" in metrics


@pytest.mark.engine("lmdb")
def test_a_histogram_counts_a_value_in_the_first_bucket_that_holds_it():
    h = Histogram((1, 2, 4))
    for value in (0, 1, 1.5, 2, 3, 4, 5, 100):
        h.observe(value)
    assert h.buckets() == [("1.0", 2), ("2.0", 4), ("4.0", 6), ("+Inf", 8)]
    assert h.count == 8 and h.total == 116.5


async def test_the_grafana_dashboard_uses_only_metrics_the_node_exports(node):
    """Every metric a panel queries is one /metrics has (after some traffic), so the
    dashboard cannot drift from the node."""
    alice = await new_user(node, "alice")
    async with alice.connect() as a:
        await a.synced.wait()
    async with ChatClient(node.http_url) as stranger:
        with pytest.raises(ClientError):
            await stranger.login("alice", "not the password")
    exported = set()
    for family, samples in (await scrape(node)).items():
        exported.add(family)
        exported.update(s.name for s in samples)
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["panels"]
    queried = set()
    for panel in dashboard["panels"]:
        if panel["title"].startswith("Cluster: "):  # a clustered node's (tests/cluster/test_operations.py)
            continue
        for target in panel.get("targets", []):
            queried.update(re.findall(r"\bchatnode_[a-z_]+", target["expr"]))
    assert {"chatnode_send_ack_seconds_bucket", "chatnode_storage_commit_seconds_bucket",
            "chatnode_http_request_seconds_bucket", "chatnode_errors_total"} <= queried
    assert queried <= exported, f"not exported: {sorted(queried - exported)}"
    documented = (ROOT / "docs" / "operations.md").read_text()
    for name in HISTOGRAMS + ("chatnode_errors_total", "chatnode_ws_closes_total"):
        assert f"`{name}" in documented, f"docs/operations.md does not explain {name}"
    await alice.aclose()


async def test_every_metric_the_docs_name_is_there_from_the_start(node):
    """docs/operations.md (and media.md) name metrics to graph and alert on: a fresh node
    exports each (the cluster's only when clustered, PostgreSQL's only on PostgreSQL), and
    every loaded plugin has its failure and dropped-notification series, at 0."""
    metrics = await scrape(node)
    postgresql_only = {"chatnode_storage_unknown_outcomes", "chatnode_storage_commit_timeouts"}
    named = set()
    for doc in ("operations.md", "media.md"):
        named |= set(re.findall(r"`(chatnode_[a-z_]*[a-z])", (ROOT / "docs" / doc).read_text()))
    named = {name.removesuffix("_total") for name in named
             if not name.startswith(("chatnode_cluster", "chatnode_routing"))}
    if node.config.storage.engine != "postgresql":
        named -= postgresql_only
    assert named - set(metrics) == set()
    loaded = set(node.plugins.names())
    for family in ("chatnode_plugins_failures", "chatnode_plugins_dropped_notifications"):
        assert {s.labels["plugin"]: s.value for s in metrics[family]} == dict.fromkeys(loaded, 0)
