"""Prometheus metrics: every number in `Node.statistics()`, in the text exposition format,
and the node's histograms and counters (node/observe.py).

Names of the statistics are their path, e.g. `chatnode_storage_commits` or
`chatnode_cluster_probes`; per-plugin maps become a `plugin` label. docs/operations.md
("Metrics") explains each histogram and counter.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from ..app import Node

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _walk(prefix: str, value: Any) -> Iterator[tuple[str, dict[str, str], float]]:
    if isinstance(value, (bool, int, float)):
        yield prefix, {}, float(value)
    elif isinstance(value, dict):
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()) \
                and prefix.endswith(("dropped_notifications", "failures")):
            for key, v in value.items():
                yield prefix, {"plugin": str(key)}, float(v)
            return
        for key, v in value.items():
            yield from _walk(f"{prefix}_{key}", v)


class NodeCollector:
    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        for name, labels, value in _walk("chatnode", self._node.statistics()):
            name = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
            family = families.get(name)
            if family is None:
                family = families[name] = GaugeMetricFamily(name, name.replace("_", " "), labels=sorted(labels))
            family.add_metric([labels[k] for k in sorted(labels)], value)
        yield from families.values()
        yield from self._node.metrics.collect()


def render(node: Node) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    return generate_latest(registry)
