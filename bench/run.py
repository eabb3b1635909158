"""`make bench`: 1-1 throughput, latency, memory per idle connection and token logins,
on each storage engine (LMDB, and PostgreSQL beside it).

The node runs as a subprocess pinned to CPU 0; the load generator (bench/rawws.py, one
selector loop, pre-built frames) is pinned to CPU 1, so the node has one core to itself,
as the peers in ../shared/ANCHORS.md were measured. With the PostgreSQL engine the node
talks to a private server (tests/pgserver.py; fsync on, durable defaults) pinned to CPU 0
as well: the server side gets one core whatever the engine, and "server CPU" is the node's
plus every PostgreSQL process's (from /proc). Runs of the engines are interleaved (run 1 of
each, then run 2, ...) so that a change in the machine's load touches them alike; every
figure is the median of the runs (small VMs are noisy), and each measurement records how
much CPU the rest of the machine used meanwhile (`others_cpu_pct`, % of one core).

    python -m bench.run [--engines lmdb,postgresql] [--runs 3] [--pairs 100] [--latency-pairs 500]
                        [--latency-rates 1000,2000,5000,10000] [--idle 2000] [--baseline DIR]
                        [--phases idle,reconnects,throughput,latency] [--profile PREFIX [--profiler perf]]
                        [--output FILE]

Two kinds of 1-1 traffic, labelled as such: *batched* (ten messages per frame, one
`received` per frame, closed loop: the throughput figure) and *one per frame* (one
message per frame at fixed offered rates, receivers acknowledging every frame as the web
client does: latency, CPU per delivered message). Latency percentiles are taken over all
samples of all runs, not as a median of per-run percentiles.

`--baseline DIR` (repeatable) adds LMDB runs of the node in another checkout (say, an
earlier commit unpacked with `git archive`), interleaved with the others: a before/after
comparison under one load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio

from bench.rawws import Conn, Loop
from node.client import ChatClient
from node.core.session import WRITER_LINGER

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PASSWORD = "bench password 1"
PAD = b"x" * 80  # message text is "<send stamp> " + 80 bytes, about 100 bytes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runqueue_wait_seconds(pid: int) -> float:
    """Time the process's threads spent runnable but waiting for a CPU (/proc schedstat):
    how much the rest of the machine starved it, as opposed to it waiting for work."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return total / 1e9


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def pin(cpu: int) -> None:
    """Put this process on one CPU (when the machine has more than one)."""
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu})


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def pg_cpu_seconds(postmaster: int) -> float:
    """CPU of a PostgreSQL server: the postmaster, its live processes (backends,
    checkpointer, WAL writer, ...), and through its children's times those that ended."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = _stat_fields(postmaster)
    total = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(int(entry.name))
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended meanwhile (and counted in the postmaster's children times)
        if int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / tick


class Server:
    """The server side of a run: the node process and, with PostgreSQL, its database server."""

    def __init__(self, proc: subprocess.Popen, postmaster: int | None = None) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.postmaster = postmaster

    def cpu(self) -> float:
        """CPU seconds used so far by the node and its database server."""
        return sum(self.parts().values())

    def parts(self) -> dict[str, float]:
        """CPU seconds so far of each process (or process group) of the server side."""
        parts = {"node": cpu_seconds(self.pid)}
        if self.postmaster:
            parts["postgresql"] = pg_cpu_seconds(self.postmaster)
        return parts

    def db_cpu(self) -> float:
        return pg_cpu_seconds(self.postmaster) if self.postmaster else 0.0


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Others:
    """How much CPU the rest of the machine (other people's tests, say) used during a
    measurement: all busy time minus the server's and this load generator's."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.loadavg = float(Path("/proc/loadavg").read_text().split()[0])
        self.t0, self.busy0, self.ours0 = time.perf_counter(), machine_busy_seconds(), self._ours()

    def _ours(self) -> float:
        # `all_cpu`: everything this benchmark runs, where the server measured is a part of it
        return getattr(self.server, "all_cpu", self.server.cpu)() + cpu_seconds(os.getpid())

    def result(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.t0
        others = (machine_busy_seconds() - self.busy0) - (self._ours() - self.ours0)
        return {"others_cpu_pct": max(0.0, 100 * others / elapsed), "loadavg_at_start": self.loadavg}


@contextmanager
def private_postgres() -> Iterator[Any]:
    """A private PostgreSQL server (fsync on) whose processes all run on CPU 0, beside
    the node: they inherit the affinity of the process that starts them."""
    sys.path.insert(0, str(ROOT / "tests"))
    from pgserver import PgServer

    server = PgServer(fsync=True)
    mask = os.sched_getaffinity(0)
    try:
        pin(0)
        server.start()
    finally:
        os.sched_setaffinity(0, mask)
    try:
        yield server
    finally:
        server.destroy()


def postmaster_pid(server: Any) -> int:
    return int((server.data / "postmaster.pid").read_text().split()[0])


def node_toml(http_port: int, ws_port: int, extra_config: str = "", *, per_address: bool = True,
              per_user: bool = True, node_lines: str = "") -> str:
    """The config of a bench node: cheap password hashing, no rate limits in the way of the
    load generator (every client is on 127.0.0.1); `node_lines` go into `[node]`;
    `per_address`/`per_user`: the node knows those limits (an earlier checkout may not)."""
    return f"""
[node]
data_dir = "data"
{node_lines}
[http]
port = {http_port}
[websocket]
port = {ws_port}
[accounts]
argon2_time_cost = 1
argon2_memory_kib = 64
login_failures_per_address = 1000000
[limits]
frames_per_second = 100000.0
frame_burst = 100000
max_connections_per_user = 10000
{"max_connections_per_address = 1000000" if per_address else ""}
{"user_messages_per_second = 1000000.0" if per_user else ""}
{"user_message_burst = 100000000" if per_user else ""}
{extra_config}
"""


def start_node(config: Path, env: dict[str, str] | None = None, stderr: Any = None) -> subprocess.Popen:
    """`chatnode serve` on `config`, pinned to CPU 0, its working directory the config's."""
    return subprocess.Popen(
        [sys.executable, *os.environ.get("BENCH_NODE_WRAPPER", "-m node").split(), "serve", "--config", str(config),
         "--log-level", "WARNING"],
        cwd=config.parent, preexec_fn=lambda: pin(0), stdout=subprocess.DEVNULL, stderr=stderr,
        env={**os.environ, **(env or {})},
    )


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("node did not start") from None
            time.sleep(0.05)


@contextmanager
def node_process(tmp: Path, extra_config: str = "", env: dict[str, str] | None = None, *, baseline: str | None = None):
    """A node on free ports with data in `tmp`; `baseline`: the checkout of an earlier node,
    whose config may not know the per-address connection cap (every client here is on
    127.0.0.1, and the cap would refuse all but 64 of them) or the per-user message rate."""
    known = (Path(baseline) / "node/config.py").read_text() if baseline else ""
    per_address = baseline is None or "max_connections_per_address" in known
    per_user = baseline is None or "user_messages_per_second" in known
    http_port, ws_port = free_port(), free_port()
    config = tmp / "config.toml"
    config.write_text(node_toml(http_port, ws_port, extra_config, per_address=per_address, per_user=per_user))
    proc = start_node(config, env)
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_healthy(proc, url)
        yield proc, url, f"ws://127.0.0.1:{ws_port}/ws"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _make_pairs(url: str, pairs: int, prefix: str) -> list[tuple[str, str, str]]:
    out: list = [None] * pairs
    limiter = trio.CapacityLimiter(16)

    async def one(i: int) -> None:
        async with limiter, ChatClient(url) as a, ChatClient(url) as b:
            for c, name in ((a, f"{prefix}a{i}"), (b, f"{prefix}b{i}")):
                await c.register(name, PASSWORD)
                await c.login(name, PASSWORD)
            chat = await a.open_direct(username=f"{prefix}b{i}")
            out[i] = (a.token, b.token, chat["id"])

    async with trio.open_nursery() as nursery:
        for i in range(pairs):
            nursery.start_soon(one, i)
    return out


def make_pairs(url: str, pairs: int, prefix: str) -> list[tuple[str, str, str]]:
    """Register 2*pairs users; (sender token, receiver token, chat id) per pair."""
    return trio.run(_make_pairs, url, pairs, prefix)


def events_of(payload: bytes) -> list[dict]:
    data = orjson.loads(payload)
    return data if isinstance(data, list) else [data]


class Receivers:
    """Count messages, acknowledge per frame, optionally record latency."""

    def __init__(self, since: float = 0.0) -> None:
        self.count = 0
        self.latencies: list[float] = []
        self.record = False
        self.since = since  # messages sent earlier (an earlier phase's backlog) are not counted

    def on_text(self, conn: Conn, payload: bytes) -> None:
        now = time.perf_counter()
        acks: dict[str, int] = {}
        for event in events_of(payload):
            if event.get("type") == "message":
                acks[event["chat"]] = event["seq"]
                sent = float(event["text"].split(" ", 1)[0])
                if sent < self.since:
                    continue
                self.count += 1
                if self.record:
                    self.latencies.append(now - sent)
        if acks:
            conn.send_text(orjson.dumps([{"type": "received", "chat": c, "seq": s} for c, s in acks.items()]))


class Senders:
    """Closed loop: keep `window` messages in flight per connection, `batch` per frame."""

    def __init__(self, window: int, batch: int) -> None:
        self.window = window
        self.batch = batch
        self.acked = 0
        self.errors = 0
        self.running = False
        self._n = 0
        # client_msg_ids must differ between phases that reuse the same senders: a repeated
        # id is an idempotent retry, answered with the first ack and never delivered again.
        self._prefix = os.urandom(4).hex().encode()

    def frame(self, chat: str, n: int) -> bytes:
        events = []
        for _ in range(n):
            self._n += 1
            events.append(b'{"type":"send","client_msg_id":"%s-%d","chat":"%s","kind":"text","text":"%.6f %s"}'
                          % (self._prefix, self._n, chat.encode(), time.perf_counter(), PAD))
        return events[0] if n == 1 else b"[" + b",".join(events) + b"]"

    def refill(self, conn: Conn) -> None:
        state = conn.state
        while self.running and state["inflight"] + self.batch <= self.window:
            conn.send_text(self.frame(state["chat"], self.batch))
            state["inflight"] += self.batch

    def on_text(self, conn: Conn, payload: bytes) -> None:
        for event in events_of(payload):
            kind = event.get("type")
            if kind == "ack":
                self.acked += 1
                conn.state["inflight"] -= 1
            elif kind == "error":
                self.errors += 1
                conn.state["inflight"] -= 1
        self.refill(conn)


def hello(token: str, cursors: dict[str, int] | None = None) -> bytes:
    event: dict = {"type": "hello", "token": token}
    if cursors:
        event["cursors"] = cursors
    return orjson.dumps(event)


def chat_positions(url: str, pairs) -> dict[str, int]:
    """Each pair's chat's last seq, so that a phase's clients resume where the log ends
    (as reconnecting devices do) instead of replaying what earlier phases sent."""

    async def fetch() -> dict[str, int]:
        out: dict[str, int] = {}
        async with ChatClient(url) as client:
            for token, _, chat in pairs:
                client.token = token
                out[chat] = (await client.request("GET", f"/api/chats/{chat}"))["chat"]["last_seq"]
        return out

    return trio.run(fetch)


PROFILERS = ("py-spy", "perf")

# What the node's kernel time is spent on, as perf names the entry points.
KERNEL_ENTRY_POINTS = ("ksys_read", "ksys_write", "__x64_sys_fdatasync", "__x64_sys_pwrite64", "__x64_sys_writev",
                       "__x64_sys_epoll_wait", "__x64_sys_futex", "__x64_sys_brk", "asm_exc_page_fault", "schedule",
                       "__x64_sys_recvfrom", "__x64_sys_sendto", "asm_sysvec_apic_timer_interrupt")


class Profiler:
    """Samples the node while a measurement runs (`--profile PREFIX`, `--profiler`).

    py-spy gives Python stacks per thread (raw collapsed stacks at PREFIX.PHASE). It counts
    a thread that waits for the interpreter lock, or is preempted, as busy. perf samples the
    whole process on a timer, the kernel included: PREFIX.PHASE.data, and beside it
    PREFIX.PHASE.txt with the share of each library (the interpreter, the kernel, LMDB, ...)
    and of each kernel entry point (system calls, page faults, scheduling)."""

    def __init__(self, tool: str, path: str, pid: int, seconds: float) -> None:
        self.tool, self.path = tool, path
        if tool == "perf":
            command = ["perf", "record", "-F", "2000", "-g", "-p", str(pid), "-o", path + ".data", "--",
                       "sleep", str(seconds)]
        else:
            command = ["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
                       "--format", "raw", "--output", path, "--nonblocking", "--threads"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finish(self) -> None:
        self.process.wait(30)
        if self.tool != "perf":
            return
        report = ["perf", "report", "-i", self.path + ".data", "--stdio", "-g", "none"]
        by_library = subprocess.run([*report, "--no-children", "--sort", "dso"], capture_output=True, text=True)
        by_symbol = subprocess.run([*report, "--children", "--sort", "sym"], capture_output=True, text=True)
        entries = [line for line in by_symbol.stdout.splitlines()
                   if "[k] " in line and line.split("[k] ")[-1].strip() in KERNEL_ENTRY_POINTS]
        Path(self.path + ".txt").write_text(
            "# share of the samples by library\n" + "\n".join(
                line for line in by_library.stdout.splitlines() if "%" in line and not line.startswith("#"))
            + "\n# kernel entry points (with what they call)\n" + "\n".join(entries) + "\n")


def _profile(pid: int, seconds: float, path: str | None, tool: str = "py-spy") -> Profiler | None:
    """Sample the node (if asked) while the measurement runs."""
    return Profiler(tool, path, pid, seconds) if path else None


def cpu_pct_by_part(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    return {name: 100 * (after[name] - before[name]) / seconds for name in before}


def throughput(server: Server, ws_url: str, pairs, *, window: int, batch: int, seconds: float,
               profile: str | None = None, profiler: str = "py-spy", receiver_ws_url: str | None = None,
               cursors: dict[str, dict[str, int]] | None = None, settle: Callable[[Loop], Any] | None = None) -> dict:
    """Closed loop; senders connect to `ws_url`, receivers to `receiver_ws_url` (default:
    the same). `cursors` (per token): where each user's chats resume, instead of being
    replayed from their start (users whose chats already hold messages). `settle(loop)`
    runs once everyone is connected (to wait for the node to be quiet)."""
    loop = Loop()
    receivers = Receivers()
    senders = Senders(window, batch)
    cursors = cursors or {}
    for _, token, _ in pairs:
        loop.connect(receiver_ws_url or ws_url, receivers.on_text).send_text(hello(token, cursors.get(token)))
    sender_conns = []
    for token, _, chat in pairs:
        conn = loop.connect(ws_url, senders.on_text)
        conn.state = {"chat": chat, "inflight": 0}
        conn.send_text(hello(token, cursors.get(token)))
        sender_conns.append(conn)
    loop.run(time.perf_counter() + 1.0)
    if settle is not None:
        settle(loop)
    senders.running = True
    for conn in sender_conns:
        senders.refill(conn)
    loop.run(time.perf_counter() + 2.0)  # warm-up
    spy = _profile(server.pid, seconds, profile, profiler)
    others = Others(server)
    p0, n0, a0, t0 = server.parts(), receivers.count, senders.acked, time.perf_counter()
    loop.run(t0 + seconds)
    p1, n1, a1, t1 = server.parts(), receivers.count, senders.acked, time.perf_counter()
    c0, c1, d0, d1 = sum(p0.values()), sum(p1.values()), p0.get("postgresql", 0.0), p1.get("postgresql", 0.0)
    senders.running = False
    loop.run(time.perf_counter() + 1.0)
    loop.close_all()
    if spy is not None:
        spy.finish()
    return {
        "delivered_per_s": (n1 - n0) / (t1 - t0),
        "acked_per_s": (a1 - a0) / (t1 - t0),
        "server_cpu_pct": 100 * (c1 - c0) / (t1 - t0),
        "server_cpu_us_per_msg": 1e6 * (c1 - c0) / max(1, n1 - n0),
        "db_cpu_us_per_msg": 1e6 * (d1 - d0) / max(1, n1 - n0),
        "cpu_pct_by_part": cpu_pct_by_part(p0, p1, t1 - t0),
        "errors": senders.errors,
        **others.result(),
    }


def latency(server: Server, url: str, ws_url: str, pairs, *, rate: float, seconds: float,
            profile: str | None = None, profiler: str = "py-spy", receiver_ws_url: str | None = None,
            cursors: dict[str, dict[str, int]] | None = None, settle: Callable[[Loop], Any] | None = None) -> dict:
    """Open loop: one message every 1/rate s, round-robin over the senders (connected to
    `ws_url`; receivers to `receiver_ws_url`, default the same). Devices resume their chat
    where its log ends, or from `cursors` (per token, all of the user's chats) if given;
    `settle(loop)` runs once everyone is connected."""
    loop = Loop()
    receivers = Receivers(since=time.perf_counter())
    senders = Senders(1 << 30, 1)
    if cursors is None:
        positions = chat_positions(url, pairs)
        cursors = {token: {chat: positions[chat]} for sender, receiver, chat in pairs for token in (sender, receiver)}
    for _, token, _chat in pairs:
        loop.connect(receiver_ws_url or ws_url, receivers.on_text).send_text(hello(token, cursors.get(token)))
    conns = []
    for token, _, chat in pairs:
        conn = loop.connect(ws_url, senders.on_text)
        conn.state = {"chat": chat, "inflight": 0}
        conn.send_text(hello(token, cursors.get(token)))
        conns.append(conn)
    loop.run(time.perf_counter() + 1.0)
    if settle is not None:
        settle(loop)
    interval = 1.0 / rate
    schedule = {"next": time.perf_counter(), "i": 0}

    def tick(now: float) -> float:
        while schedule["next"] <= now:
            conn = conns[schedule["i"] % len(conns)]
            conn.send_text(senders.frame(conn.state["chat"], 1))
            schedule["i"] += 1
            schedule["next"] += interval
        return schedule["next"]

    loop.run(time.perf_counter() + 2.0, tick)  # warm-up at the same rate, not recorded
    receivers.record = True
    start = time.perf_counter()
    sent_before = schedule["i"]
    spy = _profile(server.pid, seconds, profile, profiler)
    others = Others(server)
    p0, n0, w0 = server.parts(), receivers.count, runqueue_wait_seconds(server.pid)
    loop.run(start + seconds, tick)
    p1, n1, w1 = server.parts(), receivers.count, runqueue_wait_seconds(server.pid)
    c0, c1, d0, d1 = sum(p0.values()), sum(p1.values()), p0.get("postgresql", 0.0), p1.get("postgresql", 0.0)
    load = others.result()
    if spy is not None:
        spy.finish()
    loop.run(time.perf_counter() + 1.0)
    loop.close_all()
    samples = sorted(receivers.latencies)
    if not samples:
        return {"offered_per_s": rate, "samples": 0}
    delivered = n1 - n0
    return {
        "offered_per_s": rate,
        "sent": schedule["i"] - sent_before,
        "samples": len(samples),
        "delivered_per_s": delivered / seconds,
        "server_cpu_pct": 100 * (c1 - c0) / seconds,
        "server_cpu_us_per_msg": 1e6 * (c1 - c0) / max(1, delivered),
        "server_runqueue_wait_pct": 100 * (w1 - w0) / seconds,  # starved by other processes
        "db_cpu_pct": 100 * (d1 - d0) / seconds,
        "cpu_pct_by_part": cpu_pct_by_part(p0, p1, seconds),
        "p50_ms": 1000 * samples[len(samples) // 2],
        "p99_ms": 1000 * samples[int(len(samples) * 0.99)],
        "max_ms": 1000 * samples[-1],
        "_samples": samples,  # pooled over the runs by `summarize`, not written out
        **load,
    }


def idle_memory(server: Server, url: str, ws_url: str, connections: int) -> dict:
    """RSS growth of the node per authenticated, idle connection."""

    async def tokens() -> list[str]:
        """One device per 100 connections, one user per 5,000 (under the per-user limit)."""
        out = []
        async with ChatClient(url) as c:
            for i in range(max(1, connections // 100)):
                if i % 50 == 0:
                    await c.register(f"idle{i // 50}", PASSWORD)
                await c.login(f"idle{i // 50}", PASSWORD)
                out.append(c.token)
        return out

    tokens_ = trio.run(tokens)
    loop = Loop()
    welcomed = {"n": 0}

    def on_text(conn: Conn, payload: bytes) -> None:
        if any(e.get("type") == "welcome" for e in events_of(payload)):
            welcomed["n"] += 1

    for _ in range(20):  # warm the node's allocator up
        loop.connect(ws_url, on_text).send_text(hello(tokens_[0]))
    loop.run(time.perf_counter() + 1.0)
    time.sleep(1.0)
    before = rss_kib(server.pid)
    for i in range(connections):
        loop.connect(ws_url, on_text).send_text(hello(tokens_[i // 100]))
        if i % 200 == 199:
            loop.run(time.perf_counter() + 0.05)
    loop.run(time.perf_counter() + WRITER_LINGER + 3.0)  # idle: past the writers' linger
    after = rss_kib(server.pid)
    opened = welcomed["n"] - 20
    loop.close_all()
    return {"connections": opened, "rss_before_mib": before / 1024, "rss_after_mib": after / 1024,
            "kib_per_connection": (after - before) / max(1, opened)}


CLOSE_NORMAL = b"\x88\x82" + b"\x00\x00\x00\x00" + b"\x03\xe8"  # masked close frame, code 1000


def reconnects(server: Server, ws_url: str, tokens: list[str], *, concurrency: int, seconds: float,
               profile: str | None = None, profiler: str = "py-spy") -> dict:
    """Token logins per second: `concurrency` clients each connect, say hello with their
    token, wait for `synced`, close, and start again."""
    loop = Loop()
    done = {"n": 0, "failed": 0}
    next_token = iter(range(1 << 62))

    def on_text(conn: Conn, payload: bytes) -> None:
        if any(e.get("type") == "synced" for e in events_of(payload)):
            done["n"] += 1
            conn.on_close = None
            conn.send_raw(CLOSE_NORMAL)
            conn.close()
            start()

    def on_close(conn: Conn) -> None:  # closed before `synced`: count it and go on
        done["failed"] += 1
        start()

    def start() -> None:
        token = tokens[next(next_token) % len(tokens)]
        conn = loop.open(ws_url, lambda c: c.send_text(hello(token)), on_text)
        conn.on_close = on_close

    for _ in range(concurrency):
        start()
    loop.run(time.perf_counter() + 1.0)  # warm-up
    spy = _profile(server.pid, seconds, profile, profiler)
    others = Others(server)
    n0, failed0, cpu0, t0 = done["n"], done["failed"], server.cpu(), time.perf_counter()
    loop.run(t0 + seconds)
    elapsed, cpu = time.perf_counter() - t0, server.cpu() - cpu0
    count = done["n"] - n0
    for conn in loop.conns:
        conn.on_close = None
    loop.close_all()
    if spy is not None:
        spy.finish()
    return {"reconnects_per_s": count / elapsed, "failed": done["failed"] - failed0,
            "server_cpu_us_per_reconnect": cpu / max(1, count) * 1e6, "concurrency": concurrency, **others.result()}


def pooled(runs: list[dict], q: float) -> float:
    """The q-quantile (in ms) over every sample of every run: a p99 of all the messages,
    not the median of per-run p99s (which hides a bad run)."""
    samples = sorted(x for r in runs for x in r.get("_samples", ()))
    return 1000 * samples[min(len(samples) - 1, int(len(samples) * q))] if samples else float("nan")


def median(runs: list[dict], key: str) -> float:
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else float("nan")


def one_run(server: Server, url: str, ws_url: str, args: argparse.Namespace, results: dict[str, list[dict]],
            tag: str) -> None:
    """Every phase asked for (`--phases`) once, on one fresh node."""
    phases = args.phases
    if "idle" in phases:
        idle = idle_memory(server, url, ws_url, args.idle)
        results["idle"].append(idle)
        print(f"{tag}: idle {idle}", flush=True)
    pairs = make_pairs(url, max(args.pairs, args.latency_pairs), "r")
    if "reconnects" in phases:
        tokens = [token for pair in pairs for token in pair[:2]]
        r = reconnects(server, ws_url, tokens, concurrency=args.reconnects, seconds=args.seconds,
                       profile=args.profile and args.profile + ".reconnects", profiler=args.profiler)
        results["reconnects"].append(r)
        print(f"{tag}: reconnects {r}", flush=True)
        time.sleep(3.0)
    # One per frame before batched: the batched phase leaves work behind (the search index
    # of ~100,000 messages) that would otherwise be counted against the next phase.
    for name in args.latency_rates.split(",") if "latency" in phases else ():
        lat = latency(server, url, ws_url, pairs[: args.latency_pairs], rate=float(name), seconds=args.seconds,
                      profile=args.profile and f"{args.profile}.latency-{name}", profiler=args.profiler)
        lat["rate_name"] = name
        results["latency"].append(lat)
        print(f"{tag}: latency {({k: v for k, v in lat.items() if k != '_samples'})}", flush=True)
        time.sleep(3.0)  # let the node drain before the next phase
    if "throughput" in phases:
        t = throughput(server, ws_url, pairs[: args.pairs], window=args.window, batch=args.batch,
                       seconds=args.seconds, profile=args.profile and args.profile + ".throughput",
                       profiler=args.profiler)
        results["throughput"].append(t)
        print(f"{tag}: throughput {t}", flush=True)


def summarize(results: dict[str, list[dict]], args: argparse.Namespace) -> dict:
    return {
        "delivered_per_s": median(results["throughput"], "delivered_per_s"),
        "acked_per_s": median(results["throughput"], "acked_per_s"),
        "server_cpu_us_per_msg": median(results["throughput"], "server_cpu_us_per_msg"),
        "db_cpu_us_per_msg": median(results["throughput"], "db_cpu_us_per_msg"),
        "throughput_others_cpu_pct": median(results["throughput"], "others_cpu_pct"),
        "latency": {name: _latency_summary([r for r in results["latency"] if r["rate_name"] == name])
                    for name in args.latency_rates.split(",")},
        "idle_kib_per_connection": median(results["idle"], "kib_per_connection"),
        "reconnects_per_s": median(results["reconnects"], "reconnects_per_s"),
        "server_cpu_us_per_reconnect": median(results["reconnects"], "server_cpu_us_per_reconnect"),
        "others_cpu_pct": median([r for phase in ("throughput", "latency", "reconnects") for r in results[phase]],
                                 "others_cpu_pct"),
    }


def _latency_summary(runs: list[dict]) -> dict:
    """One offered rate: p50/p99 over all samples of all runs; the rest as medians."""
    out = {key: median(runs, key) for key in ("offered_per_s", "delivered_per_s", "server_cpu_pct",
                                               "server_cpu_us_per_msg", "server_runqueue_wait_pct", "db_cpu_pct",
                                               "others_cpu_pct")}
    out["p50_ms"], out["p99_ms"] = pooled(runs, 0.50), pooled(runs, 0.99)
    out["samples"] = sum(r.get("samples", 0) for r in runs)
    return out


def run_all(args: argparse.Namespace) -> dict:
    """`args.runs` rounds; in each, one run per engine (and of the baseline), in turn."""
    labels = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(labels) - {"lmdb", "postgresql"}
    if unknown:
        raise SystemExit(f"unknown engines: {', '.join(sorted(unknown))} (lmdb, postgresql)")
    baselines = {f"baseline{i or ''}": path for i, path in enumerate(args.baseline or [])}
    labels += baselines
    results = {label: {"throughput": [], "latency": [], "idle": [], "reconnects": []} for label in labels}
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(private_postgres()) if "postgresql" in labels else None
        for run in range(args.runs):
            for label in labels:
                extra, env, postmaster = "", {}, None
                if label == "postgresql":
                    extra = f'[storage]\nengine = "postgresql"\ndsn = "{pg.create_database()}"\n'
                    postmaster = postmaster_pid(pg)
                elif label in baselines:
                    env = {"PYTHONPATH": str(Path(baselines[label]).resolve())}
                with tempfile.TemporaryDirectory(prefix="chatnode-bench-") as tmp:
                    with node_process(Path(tmp), extra, env, baseline=baselines.get(label)) as (proc, url, ws_url):
                        one_run(Server(proc, postmaster), url, ws_url, args, results[label], f"run {run + 1} {label}")
    engines = {label: {"summary": summarize(results[label], args), "runs": results[label]} for label in labels}
    for label in labels:
        for r in results[label]["latency"]:
            r.pop("_samples", None)
    return {"engines": engines, "args": {**vars(args), "phases": sorted(args.phases), "output": str(args.output)},
            "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}


def _latency_cell(s: dict) -> str:
    def ms(x: float) -> str:
        return f"{x:.1f}" if x < 100 else f"{x:,.0f}"

    return (f"{ms(s['p50_ms'])} / {ms(s['p99_ms'])} ms ({s['delivered_per_s']:,.0f}/s; "
            f"{s['server_cpu_pct']:.0f} %; {s['server_cpu_us_per_msg']:.0f} µs)")


def table(report: dict, args: argparse.Namespace) -> str:
    """The figures as a Markdown table, one column per engine."""
    engines = report["engines"]
    names = {"lmdb": "LMDB", "postgresql": "PostgreSQL",
             **{f"baseline{i or ''}": f"LMDB, {path}" for i, path in enumerate(args.baseline or [])}}
    columns = " | ".join(names[e] for e in engines)
    head = f"| figure (median of {args.runs} runs) | {columns} |\n| --- |{' --- |' * len(engines)}\n"

    def row(label: str, cell) -> str:
        return f"| {label} | " + " | ".join(cell(e["summary"]) for e in engines.values()) + " |\n"

    out = head
    if "throughput" in args.phases:
        out += row(f"batched: 1-1 messages delivered per second ({args.pairs} pairs, {args.window} in flight, "
                   f"{args.batch} per frame)", lambda s: f"{s['delivered_per_s']:,.0f}")
        out += row("batched: server CPU per delivered message (of which the database server)",
                   lambda s: f"{s['server_cpu_us_per_msg']:.0f} µs ({s['db_cpu_us_per_msg']:.0f} µs)")
    for name in args.latency_rates.split(",") if "latency" in args.phases else ():
        out += row(f"one per frame ({args.latency_pairs} pairs), offered "
                   f"{name} msg/s: p50 / p99 over all samples "
                   "(delivered/s; server CPU; CPU per delivered message)",
                   lambda s, n=name: _latency_cell(s["latency"][n]))
    if "idle" in args.phases:
        out += row("memory per idle authenticated connection", lambda s: f"{s['idle_kib_per_connection']:.1f} KiB")
    if "reconnects" in args.phases:
        out += row("token logins per second (server CPU each)",
                   lambda s: f"{s['reconnects_per_s']:,.0f} ({s['server_cpu_us_per_reconnect']:.0f} µs)")
    out += row("CPU used by other processes while measuring (% of one core)", lambda s: f"{s['others_cpu_pct']:.0f} %")
    return out


def ratios(report: dict, args: argparse.Namespace) -> str:
    """Per round, one engine's figure divided by another's, then the median over rounds: runs
    of one round ran minutes apart, under much the same load, so their ratio is steadier than
    a ratio of medians when the machine is shared."""
    engines = report["engines"]
    candidates = [("postgresql", "lmdb")] + [("lmdb", b) for b in engines if b.startswith("baseline")]
    pairs = [(a, b) for a, b in candidates if a in engines and b in engines]
    if not pairs:
        return ""
    names = {"lmdb": "LMDB", "postgresql": "PostgreSQL",
             **{f"baseline{i or ''}": f"LMDB, {Path(path).name}" for i, path in enumerate(args.baseline or [])}}
    def latency_of(run: dict, key: str, name: str) -> list[float]:
        return [r[key] for r in run["latency"] if r["rate_name"] == name]

    figures = {
        "delivered per second": lambda run: [r["delivered_per_s"] for r in run["throughput"]],
        "server CPU per message": lambda run: [r["server_cpu_us_per_msg"] for r in run["throughput"]],
        "token logins per second": lambda run: [r["reconnects_per_s"] for r in run["reconnects"]],
    }
    for rate in args.latency_rates.split(","):
        figures[f"one per frame at {rate} msg/s: p50"] = lambda run, r=rate: latency_of(run, "p50_ms", r)
        figures[f"one per frame at {rate} msg/s: p99"] = lambda run, r=rate: latency_of(run, "p99_ms", r)
        figures[f"one per frame at {rate} msg/s: CPU per message"] = (
            lambda run, r=rate: latency_of(run, "server_cpu_us_per_msg", r))
    out = "| ratio (median over rounds) | " + " | ".join(f"{names[a]} ÷ {names[b]}" for a, b in pairs) + " |\n"
    out += "| --- |" + " --- |" * len(pairs) + "\n"
    for label, values in figures.items():
        cells = []
        for a, b in pairs:
            per_round = [x / y for x, y in zip(values(engines[a]["runs"]), values(engines[b]["runs"]), strict=False)
                         if y]
            cells.append(f"{statistics.median(per_round):.2f}" if per_round else "-")
        if any(cell != "-" for cell in cells):  # a figure of a phase that was run
            out += f"| {label} | " + " | ".join(cells) + " |\n"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="lmdb,postgresql", help="storage engines to run, in turn")
    parser.add_argument("--baseline", action="append", default=None,
                        help="also run LMDB with the node from this checkout (an earlier commit), in turn")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=100, help="sender/receiver pairs for throughput")
    parser.add_argument("--window", type=int, default=10, help="messages in flight per sender")
    parser.add_argument("--batch", type=int, default=10, help="messages per frame")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--latency-pairs", type=int, default=500)
    parser.add_argument("--latency-rates", default="250,1000,2000,5000,10000",
                        help="offered rates (msg/s) for the one-per-frame figures")
    parser.add_argument("--phases", default="idle,reconnects,throughput,latency",
                        help="which measurements to run: idle, reconnects, throughput (batched), latency (one per frame)")
    parser.add_argument("--idle", type=int, default=2000, help="idle connections for the memory figure")
    parser.add_argument("--reconnects", type=int, default=100,
                        help="concurrent clients for the token-login (reconnect) rate; 0 skips it")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json",
                        help="where the raw results go (a measurement of one change: elsewhere, so that "
                             "the last full run stays on record)")
    parser.add_argument("--profile", default=None,
                        help="sample the node during each measurement, writing to files named from this prefix")
    parser.add_argument("--profiler", choices=PROFILERS, default="py-spy",
                        help="py-spy: Python stacks per thread; perf: the whole process by library and kernel entry point")
    args = parser.parse_args()
    args.phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if args.reconnects == 0:
        args.phases.discard("reconnects")
    if args.idle == 0:
        args.phases.discard("idle")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pin(1)
    report = run_all(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print("\n" + table(report, args))
    print(ratios(report, args))


if __name__ == "__main__":
    main()
