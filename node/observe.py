"""Histograms and counters that answer "is it slow?" (docs/operations.md, "Metrics").

Observed on the hot path, so each observation is a bisect and two additions on plain
lists, with no lock (everything that observes runs on the node's one trio thread, except
the storage commit, whose time the writer task observes after the thread returns).
Where one observation per batch tells as much, the sequencer observes per batch (commit
time, batch size, fan-out time), not per message; the one per-message figure, send to
ack, is read from a timestamp the send carries.

`Metrics.collect` turns them into Prometheus families for `/metrics` (node/web/metrics.py).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

#: Seconds, from half a millisecond (an LMDB commit on a fast disk) to 10 s (trouble).
SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Counts of things (operations in a batch, events in a queue): powers of two.
COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class Histogram:
    """Cumulative on output, per bucket inside: ``counts[i]`` holds the observations
    ``bounds[i-1] < v <= bounds[i]``; the last slot is +Inf."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


class Family:
    """Histograms by label values (created on first use)."""

    __slots__ = ("bounds", "by_labels")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.by_labels: dict[tuple[str, ...], Histogram] = {}

    def labels(self, *values: str) -> Histogram:
        histogram = self.by_labels.get(values)
        if histogram is None:
            histogram = self.by_labels[values] = Histogram(self.bounds)
        return histogram


class Counter:
    """Counts by label values."""

    __slots__ = ("by_labels",)

    def __init__(self) -> None:
        self.by_labels: dict[tuple[str, ...], int] = {}

    def inc(self, *values: str) -> None:
        self.by_labels[values] = self.by_labels.get(values, 0) + 1


class Metrics:
    """One node's histograms and counters (every name is in docs/operations.md)."""

    def __init__(self) -> None:
        self.send_ack = Histogram(SECONDS)  # a send read from a device -> its ack queued
        self.commit = Histogram(SECONDS)  # one storage transaction, queued writes folded in
        self.commit_ops = Histogram(COUNTS)  # write ops in that transaction
        self.batch_ops = Histogram(COUNTS)  # operations the sequencer applied as one batch
        self.fan_out = Histogram(SECONDS)  # a batch's effects: acks, offers to devices, notices
        self.queue_depth = Histogram(COUNTS)  # events waiting in a device's queue, per frame written
        self.http = Family(SECONDS)  # (method, route) -> request time
        self.errors = Counter()  # (code, transport) -> errors sent to clients
        self.closes = Counter()  # (code,) -> chat sockets ended with that close code

    def observe_commit(self, seconds: float, ops: int) -> None:
        """The storage writer's hook (node/storage/writer.py)."""
        self.commit.observe(seconds)
        self.commit_ops.observe(ops)

    def collect(self) -> Iterator[Metric]:
        singles = (
            ("chatnode_send_ack_seconds", "Time from reading a send to queueing its ack (after the commit)",
             self.send_ack),
            ("chatnode_storage_commit_seconds", "Time of one storage commit (a group of writes)", self.commit),
            ("chatnode_storage_commit_ops", "Write operations in one storage commit", self.commit_ops),
            ("chatnode_sequencer_batch_operations", "Operations the sequencer applied in one batch", self.batch_ops),
            ("chatnode_fan_out_seconds", "Time to run one batch's effects: acks and offers to devices",
             self.fan_out),
            ("chatnode_ws_queue_depth", "Events queued for a device when its writer takes a frame",
             self.queue_depth),
        )
        for name, text, histogram in singles:
            family = HistogramMetricFamily(name, text)
            family.add_metric([], histogram.buckets(), histogram.total)
            yield family
        family = HistogramMetricFamily("chatnode_http_request_seconds",
                                       "HTTP request time, by method and route (request to end of response)",
                                       labels=["method", "route"])
        for labels, histogram in sorted(self.http.by_labels.items()):
            family.add_metric(list(labels), histogram.buckets(), histogram.total)
        yield family
        counter = CounterMetricFamily("chatnode_errors", "Errors sent to clients, by code and transport",
                                      labels=["code", "transport"])
        for labels, value in sorted(self.errors.by_labels.items()):
            counter.add_metric(list(labels), value)
        yield counter
        counter = CounterMetricFamily("chatnode_ws_closes", "Chat sockets ended, by close code", labels=["code"])
        for labels, value in sorted(self.closes.by_labels.items()):
            counter.add_metric(list(labels), value)
        yield counter
