"""Kill-to-served: how long the devices of a node that dies (kill -9) go unserved.

In a round, each of `len(pairs)` users has one device on the victim node and chats 1-1
(a message a second each way) with a partner whose device is on another node. The victim
is killed with SIGKILL. Each of its devices then does what node/client.py does: after the
client's backoff it reconnects to the next node it knows, says `hello` with its cursor
and waits for `synced`; at that moment its partner sends it a probe message through the
partner's node, retrying `unavailable` every 50 ms as a client does. The device is served
again when the probe arrives. Per device: seconds from the kill until it was welcomed
on another node, synced, and served. The chats owned by the victim cannot take a message
until membership declares the victim failed and ownership moves (node/cluster/ownership.py),
so the figures are also split by the owner of the chat.
"""

from __future__ import annotations

import heapq
import itertools
import os
import random
import time
from collections.abc import Callable
from typing import Any

import orjson

from bench.cluster_nodes import BenchNode, owner
from bench.rawws import Conn, Loop
from bench.run import events_of, hello
from node.client import BACKOFF_MAX, BACKOFF_MIN

CHAT_INTERVAL = 1.0  # seconds between a device's chat messages
PROBE_RETRY = 0.05  # seconds before a probe refused as `unavailable` is sent again


class Timers:
    """Callbacks due at perf_counter times, run from the load loop's tick."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (when, next(self._order), fn))

    def tick(self, now: float) -> float:
        while self._heap and self._heap[0][0] <= now:
            heapq.heappop(self._heap)[2]()
        return min(self._heap[0][0] if self._heap else now + 0.05, now + 0.05)


class Pair:
    """A device on the victim node, its partner's device elsewhere, and their chat."""

    def __init__(self, index: int, victim_token: str, partner_token: str, chat: str, victim_urls: list[str],
                 partner_url: str, cursor: int, owned_by_victim: bool) -> None:
        self.index = index
        self.victim_token, self.partner_token, self.chat = victim_token, partner_token, chat
        self.urls = victim_urls  # the device's known nodes, its current one first
        self.partner_url = partner_url
        self.cursor = cursor
        self.owned_by_victim = owned_by_victim
        self.device: Conn | None = None
        self.partner: Conn | None = None
        self.welcomed = False  # the current connection was welcomed
        self.synced = False
        self.reconnected_at: float | None = None  # after the kill: welcomed on another node
        self.synced_at: float | None = None
        self.served_at: float | None = None
        self.probe: bytes | None = None
        self.probe_refused = 0
        self.attempts = 0


class KillRound:
    def __init__(self, victim: BenchNode, nodes: list[BenchNode], pairs: list[tuple[str, str, str]],
                 cursors: dict[str, dict[str, int]]) -> None:
        self.victim = victim
        self.loop = Loop()
        self.timers = Timers()
        self.prefix = os.urandom(4).hex()
        self.sent = itertools.count()
        self.killed_at: float | None = None
        self.cursors = cursors  # per token: where every chat of the user resumes
        others = [n for n in nodes if n is not victim]
        self.pairs = []
        for i, (victim_token, partner_token, chat) in enumerate(pairs):
            # the device knows every node; half try one survivor next, half the other
            order = [victim.ws_url, others[i % 2].ws_url, others[1 - i % 2].ws_url]
            self.pairs.append(Pair(i, victim_token, partner_token, chat, order, others[(i // 2) % 2].ws_url,
                                   cursors.get(victim_token, {}).get(chat, 0), owner(chat, nodes) == victim.node_id))

    # -- the devices ---------------------------------------------------------------------

    def _send(self, conn: Conn | None, chat: str, cmid: str, text: str) -> None:
        if conn is not None and not conn.closed:
            conn.send_text(orjson.dumps({"type": "send", "client_msg_id": cmid, "chat": chat, "kind": "text",
                                         "text": text}))

    def _chatter(self, pair: Pair) -> None:
        """Both sides say something every CHAT_INTERVAL (the device only while synced)."""
        if pair.synced:
            self._send(pair.device, pair.chat, f"{self.prefix}-{next(self.sent)}", "hello")
        self._send(pair.partner, pair.chat, f"{self.prefix}-{next(self.sent)}", "hello")
        self.timers.at(time.perf_counter() + CHAT_INTERVAL, lambda: self._chatter(pair))

    def _open_device(self, pair: Pair, backoff: float) -> None:
        """Connect to the first known node (non-blocking), as the client's reconnect does."""
        pair.welcomed = pair.synced = False
        pair.attempts += 1
        cursors = {**self.cursors.get(pair.victim_token, {}), pair.chat: pair.cursor}
        conn = self.loop.open(pair.urls[0], lambda c: c.send_text(hello(pair.victim_token, cursors)),
                              lambda c, payload: self._on_device(pair, c, payload))
        conn.on_close = lambda c: self._device_closed(pair, c, backoff)
        pair.device = conn

    def _device_closed(self, pair: Pair, conn: Conn, backoff: float) -> None:
        """node/client.py's `_reopen`: sleep, move to the next node, try; back off
        (doubling) while attempts fail, start over once a connection had been welcomed."""
        if conn is not pair.device:
            return
        pair.device = None
        backoff = BACKOFF_MIN if pair.welcomed else min(BACKOFF_MAX, backoff * 2)
        delay = random.uniform(backoff / 2, backoff) + random.uniform(0, BACKOFF_MIN)

        def attempt() -> None:
            pair.urls.append(pair.urls.pop(0))
            self._open_device(pair, backoff)

        self.timers.at(time.perf_counter() + delay, attempt)

    def _on_device(self, pair: Pair, conn: Conn, payload: bytes) -> None:
        if conn is not pair.device:
            return
        now = time.perf_counter()
        top = 0
        for event in events_of(payload):
            kind = event.get("type")
            if kind == "welcome":
                pair.welcomed = True
                if self.killed_at is not None and pair.reconnected_at is None:
                    pair.reconnected_at = now
            elif kind == "synced":
                pair.synced = True
                if self.killed_at is not None and pair.synced_at is None:
                    pair.synced_at = now
                    self._send_probe(pair)
            elif kind in ("message", "ack") and event.get("chat") == pair.chat:
                pair.cursor = max(pair.cursor, event["seq"])
                if kind == "message":
                    top = max(top, event["seq"])
                    if pair.probe is not None and pair.served_at is None and event.get("text") == pair.probe.decode():
                        pair.served_at = now
        if top:
            conn.send_text(orjson.dumps({"type": "received", "chat": pair.chat, "seq": top}))

    def _send_probe(self, pair: Pair) -> None:
        pair.probe = f"probe {self.prefix} {pair.index}".encode()
        self._send(pair.partner, pair.chat, f"{self.prefix}-probe-{pair.index}", pair.probe.decode())

    def _on_partner(self, pair: Pair, conn: Conn, payload: bytes) -> None:
        top = 0
        for event in events_of(payload):
            kind = event.get("type")
            if kind == "error" and event.get("ref") == f"{self.prefix}-probe-{pair.index}":
                pair.probe_refused += 1  # `unavailable` while ownership moves: the same message again
                self.timers.at(time.perf_counter() + PROBE_RETRY, lambda: self._send(
                    pair.partner, pair.chat, f"{self.prefix}-probe-{pair.index}", pair.probe.decode()))
            elif kind == "message" and event.get("chat") == pair.chat:
                top = max(top, event["seq"])
        if top:
            conn.send_text(orjson.dumps({"type": "received", "chat": pair.chat, "seq": top}))

    # -- the round -----------------------------------------------------------------------

    def run(self, *, before: float = 2.0, timeout: float = 30.0,
            settle: Callable[[Loop], Any] | None = None) -> dict[str, Any]:
        """Connect, `settle(loop)`, chat for `before` seconds, kill the victim, wait until
        every device is served again (or `timeout`). The caller starts the victim again."""
        for pair in self.pairs:
            pair.partner = self.loop.connect(pair.partner_url, lambda c, p, pair=pair: self._on_partner(pair, c, p))
            pair.partner.send_text(hello(pair.partner_token, self.cursors.get(pair.partner_token)))
            self._open_device(pair, BACKOFF_MIN)
        deadline = time.perf_counter() + 10
        while not all(p.synced for p in self.pairs):
            if time.perf_counter() > deadline:
                raise RuntimeError("devices did not sync on the victim node")
            self.loop.run(time.perf_counter() + 0.05, self.timers.tick)
        if settle is not None:
            settle(self.loop)
        for pair in self.pairs:
            start = time.perf_counter() + random.uniform(0, CHAT_INTERVAL)
            self.timers.at(start, lambda pair=pair: self._chatter(pair))
        self.loop.run(time.perf_counter() + before, self.timers.tick)
        self.killed_at = time.perf_counter()
        self.victim.kill()
        deadline = self.killed_at + timeout
        while not all(p.served_at for p in self.pairs) and time.perf_counter() < deadline:
            self.loop.run(time.perf_counter() + 0.05, self.timers.tick)
        self.loop.close_all()
        return self.result()

    def result(self) -> dict[str, Any]:
        t0 = self.killed_at
        assert t0 is not None

        def since(t: float | None) -> float | None:
            return None if t is None else t - t0

        devices = [{"owned_by_victim": p.owned_by_victim, "reconnected_s": since(p.reconnected_at),
                    "synced_s": since(p.synced_at), "served_s": since(p.served_at),
                    "probe_refused": p.probe_refused, "attempts": p.attempts} for p in self.pairs]
        return {"victim": self.victim.node_id, "devices": devices,
                "not_served": sum(d["served_s"] is None for d in devices)}
