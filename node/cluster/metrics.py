"""The cluster's part of /metrics (docs/operations.md, "Metrics"): operations forwarded to
their chats' owners and how long their answers took, chats whose owner changed, and each
peer link's queue.

The counters are kept by the routing (node/core/cluster_routing.py) as it forwards and
answers, on the node's one trio thread like node/observe.py's; the link figures are read
from the links when /metrics is scraped, so a scrape shows the queues as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ..observe import SECONDS, Counter, Histogram

if TYPE_CHECKING:
    from .links import Links

#: (name, help, kind) of the per-peer link figures, from `Links.peer_statistics`.
LINK_FIGURES = (
    ("queued", "Messages waiting in the link to a peer", "gauge"),
    ("in_flight", "Messages of the frame being written to a peer", "gauge"),
    ("connected", "Whether the link's stream to a peer is up (1) or being dialled (0)", "gauge"),
    ("sent", "Messages written to a peer's link", "counter"),
    ("dropped", "Messages refused because a peer's link queue was full", "counter"),
)


class ClusterMetrics:
    """One node's cluster counters and histogram."""

    def __init__(self) -> None:
        self.forwarded = Counter()  # (operation kind,) -> operations sent on to a chat's owner
        self.forward = Histogram(SECONDS)  # a forwarded operation: request sent -> answer received
        self.ownership_moves = 0  # chats this node knew of whose owner changed with a view

    def collect(self, links: Links | None) -> Iterator[Metric]:
        moves = CounterMetricFamily("chatnode_cluster_ownership_moves",
                                    "Chats whose owner changed, among those this node knew of, as its view changed")
        moves.add_metric([], self.ownership_moves)
        yield moves
        forwarded = CounterMetricFamily("chatnode_cluster_forwarded", "Operations forwarded to their chat's owner",
                                        labels=["kind"])
        for labels, value in sorted(self.forwarded.by_labels.items()):
            forwarded.add_metric(list(labels), value)
        yield forwarded
        latency = HistogramMetricFamily("chatnode_cluster_forward_seconds",
                                        "A forwarded operation: from its request to the owner's answer")
        latency.add_metric([], self.forward.buckets(), self.forward.total)
        yield latency
        peers = links.statistics()["peers"] if links is not None else {}
        for key, text, kind in LINK_FIGURES:
            name = f"chatnode_cluster_link_{key}"
            family: GaugeMetricFamily | CounterMetricFamily = (
                GaugeMetricFamily(name, text, labels=["peer"]) if kind == "gauge"
                else CounterMetricFamily(name, text, labels=["peer"]))
            for peer, figures in sorted(peers.items(), key=lambda item: int(item[0])):
                family.add_metric([peer], float(figures[key]))
            yield family
