"""Group fan-out: a 500-member group with every member connected.

Measures how long a message takes to reach the *last* member (p50/p99, at a steady rate)
and how many group messages per second the node can fan out to all members (closed
loop). Node pinned to CPU 0, load generator (bench/rawws.py) to CPU 1; medians of runs.

    python -m bench.groups [--members 500] [--runs 3] [--rate 10] [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import trio

from bench.rawws import Conn, Loop
from bench.run import PASSWORD, RESULTS, Server, _profile, cpu_pct_by_part, events_of, hello, node_process, pin
from node.client import ChatClient


async def _setup(url: str, members: int) -> tuple[list[str], str]:
    """Register `members` users and one group holding them all; returns tokens and the chat id."""
    tokens: list[str] = [""] * members
    ids: list[str] = [""] * members
    limiter = trio.CapacityLimiter(16)

    async def one(i: int) -> None:
        async with limiter, ChatClient(url) as c:
            await c.register(f"grp{i}", PASSWORD)
            await c.login(f"grp{i}", PASSWORD)
            tokens[i], ids[i] = c.token, c.user["id"]

    async with trio.open_nursery() as nursery:
        for i in range(members):
            nursery.start_soon(one, i)
    async with ChatClient(url, token=tokens[0]) as owner:
        group = await owner.create_group("bench", members=ids[1:])
    return tokens, group["id"]


class Fanout:
    """Receivers record when each message number reached them; they acknowledge each
    frame, or (with `ack_delay`) at most once per `ack_delay` seconds, as a client that
    batches its acknowledgements would."""

    def __init__(self, members: int, ack_delay: float = 0.0, chat: str | None = None) -> None:
        self.ack_delay = ack_delay
        self.chat = chat  # count this chat's messages only (members may have others)
        self.unacked: dict[Conn, tuple[str, int]] = {}
        self.expected = members - 1
        self.sent_at: dict[int, float] = {}
        self.seen: dict[int, int] = {}
        self.last_at: dict[int, float] = {}
        self.deliveries = 0
        # client_msg_ids of their own: a group measured twice must not be answered as retries
        self.prefix = os.urandom(4).hex().encode()

    def on_receiver(self, conn: Conn, payload: bytes) -> None:
        now = time.perf_counter()
        top = 0
        chat = None
        for event in events_of(payload):
            if self.chat is not None and event.get("chat") != self.chat:
                continue
            if event.get("type") == "message" and event.get("kind") == "text":
                number = int(event["text"].split(" ", 1)[0])
                self.deliveries += 1
                self.seen[number] = self.seen.get(number, 0) + 1
                if self.seen[number] == self.expected:
                    self.last_at[number] = now
                top, chat = event["seq"], event["chat"]
        if chat is not None:
            if self.ack_delay:
                self.unacked[conn] = (chat, top)
            else:
                conn.send_text(orjson.dumps({"type": "received", "chat": chat, "seq": top}))

    def flush_acks(self) -> None:
        for conn, (chat, top) in self.unacked.items():
            conn.send_text(orjson.dumps({"type": "received", "chat": chat, "seq": top}))
        self.unacked.clear()


def run_once(members: int, rate: float, seconds: float, window: int, profile: str | None = None,
             ack_delay: float = 0.0) -> dict:
    with tempfile.TemporaryDirectory(prefix="chatnode-bench-") as tmp, \
            node_process(Path(tmp), "outgoing_queue = 4096\n") as (proc, url, ws_url):
        tokens, chat = trio.run(_setup, url, members)
        return measure(Server(proc), [ws_url], tokens, chat, rate=rate, seconds=seconds, window=window,
                       profile=profile, ack_delay=ack_delay)


def measure(server: Server, ws_urls: list[str], tokens: list[str], chat: str, *, rate: float, seconds: float,
            window: int, profile: str | None = None, ack_delay: float = 0.0, pause: float = 2.0,
            drain: float = 2.0, cursors: dict[str, dict[str, int]] | None = None,
            settle: Callable[[Loop], Any] | None = None) -> dict:
    """Both phases on a group whose first member (`tokens[0]`) sends: the sender connects
    to `ws_urls[0]`, member i to `ws_urls[i % len(ws_urls)]` (one URL: one node; three:
    members spread over a cluster). `pause`: seconds to settle after connecting; `drain`:
    seconds for what is in flight to arrive after each phase. `cursors` (per token): where
    members' chats resume (a group measured again must not be replayed to them).
    `settle(loop)` runs after the pause that follows connecting."""
    members = len(tokens)
    loop = Loop()
    fan = Fanout(members, ack_delay, chat)
    cursors = cursors or {}
    for i, token in enumerate(tokens[1:], 1):
        loop.connect(ws_urls[i % len(ws_urls)], fan.on_receiver).send_text(hello(token, cursors.get(token)))
    state = {"inflight": 0, "n": 0}

    def on_sender(conn: Conn, payload: bytes) -> None:
        for event in events_of(payload):
            if event.get("type") in ("ack", "error"):
                state["inflight"] -= 1

    sender = loop.connect(ws_urls[0], on_sender)
    sender.send_text(hello(tokens[0], cursors.get(tokens[0])))
    loop.run(time.perf_counter() + pause)
    if settle is not None:
        settle(loop)

    def send_one() -> None:
        state["n"] += 1
        n = state["n"]
        fan.sent_at[n] = time.perf_counter()
        sender.send_text(b'{"type":"send","client_msg_id":"%s-%d","chat":"%s","kind":"text","text":"%d hello group"}'
                         % (fan.prefix, n, chat.encode(), n))
        state["inflight"] += 1

    # 1. latency at a steady rate
    interval = 1.0 / rate
    schedule = {"next": time.perf_counter()}

    acks = {"next": time.perf_counter() + ack_delay}

    def tick(now: float) -> float:
        while schedule["next"] <= now:
            send_one()
            schedule["next"] += interval
        if ack_delay and now >= acks["next"]:
            fan.flush_acks()
            acks["next"] = now + ack_delay
        return min(schedule["next"], acks["next"]) if ack_delay else schedule["next"]

    first = state["n"] + 1
    spy = _profile(server.pid, seconds, profile)
    loop.run(time.perf_counter() + seconds, tick)
    if spy is not None:
        spy.finish()
    loop.run(time.perf_counter() + drain)
    steady = [fan.last_at[n] - fan.sent_at[n] for n in range(first, state["n"] + 1) if n in fan.last_at]
    missing = state["n"] - first + 1 - len(steady)

    # 2. throughput: keep `window` messages in flight
    before = state["n"]
    p0, d0, t0 = server.parts(), fan.deliveries, time.perf_counter()

    def keep_full(now: float) -> float:
        while state["inflight"] < window:
            send_one()
        if ack_delay and now >= acks["next"]:
            fan.flush_acks()
            acks["next"] = now + ack_delay
        return now + 0.001

    loop.run(t0 + seconds, keep_full)
    p1, d1, t1 = server.parts(), fan.deliveries, time.perf_counter()
    loop.run(time.perf_counter() + drain)
    loop.close_all()
    steady.sort()
    return {
        "members": members,
        "rate": rate,
        "samples": len(steady),
        "not_complete": missing,
        "last_member_p50_ms": 1000 * steady[len(steady) // 2] if steady else None,
        "last_member_p99_ms": 1000 * steady[int(len(steady) * 0.99)] if steady else None,
        "group_msgs_per_s": (d1 - d0) / (members - 1) / (t1 - t0),
        "deliveries_per_s": (d1 - d0) / (t1 - t0),
        "server_cpu_pct": 100 * (sum(p1.values()) - sum(p0.values())) / (t1 - t0),
        "cpu_pct_by_part": cpu_pct_by_part(p0, p1, t1 - t0),
        "sent_in_throughput_phase": state["n"] - before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=10.0, help="group messages per second for the latency figure")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--window", type=int, default=10, help="messages in flight in the throughput phase")
    parser.add_argument("--ack-delay", type=float, default=0.0, help="receivers batch acknowledgements (s)")
    parser.add_argument("--profile", default=None, help="sample the node with py-spy during the latency phase")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pin(1)
    runs = []
    for i in range(args.runs):
        result = run_once(args.members, args.rate, args.seconds, args.window, args.profile, args.ack_delay)
        print(f"run {i + 1}: {result}", flush=True)
        runs.append(result)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs if r[key] is not None)

    summary = {k: med(k) for k in ("last_member_p50_ms", "last_member_p99_ms", "group_msgs_per_s", "deliveries_per_s")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "groups.json").write_text(json.dumps({"summary": summary, "runs": runs, "args": vars(args)}, indent=2))
    print(
        f"\n| {args.members}-member group, every member connected | median of {args.runs} runs |\n| --- | --- |\n"
        f"| time until the last member has it, at {args.rate:g} msg/s: p50 / p99 | "
        f"{summary['last_member_p50_ms']:.1f} / {summary['last_member_p99_ms']:.1f} ms |\n"
        f"| group messages fanned out per second ({args.window} in flight) | {summary['group_msgs_per_s']:,.0f} "
        f"({summary['deliveries_per_s']:,.0f} deliveries/s) |"
    )


if __name__ == "__main__":
    main()
