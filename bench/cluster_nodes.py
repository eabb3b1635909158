"""The server side of bench/cluster.py: three cluster nodes and one single node, all
`chatnode serve` subprocesses on loopback pinned to CPU 0 beside one private PostgreSQL
(each configuration with its own database), so that whichever is measured, the server
side has one core, as in bench/run.py.

Cluster nodes run the membership defaults of config.toml (probe every second, and so on:
what kill-to-served measures is what an operator gets), seal their traffic with a key
as in production, and list each other as seeds, so a killed node started again rejoins
through whichever is alive.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from bench.rawws import Loop
from bench.run import cpu_seconds, free_port, node_toml, pg_cpu_seconds, start_node, wait_healthy
from node.cluster.ownership import owner_of

KEY = base64.b64encode(bytes(range(7, 39))).decode()
#: Every node's outgoing queue per connection is as deep as bench/groups.py's (a
#: 500-member group message in flight ten times reaches each member's queue ten times).
LIMITS = "outgoing_queue = 4096\n"


def free_cluster_port() -> int:
    """A port free for both UDP (gossip) and TCP (state exchange, links)."""
    while True:
        port = free_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue


class BenchNode:
    """One `chatnode serve`, restartable on the same ports and data (the kill rounds)."""

    def __init__(self, root: Path, name: str, storage: str, node_id: int | None = None) -> None:
        self.node_id = node_id
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.storage = storage
        self.seeds: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.past_cpu = 0.0  # CPU seconds of this node's earlier (killed) processes
        self.pick_ports()

    def pick_ports(self) -> None:
        self.http_port, self.ws_port = free_port(), free_port()
        self.cluster_port = free_cluster_port() if self.node_id is not None else 0
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.ws_url = f"ws://127.0.0.1:{self.ws_port}/ws"

    @property
    def cluster_address(self) -> str:
        return f"127.0.0.1:{self.cluster_port}"

    def configure(self, seeds: list[str]) -> None:
        self.seeds = seeds
        node_lines = f'id = {self.node_id}\nname = "{self.name}"' if self.node_id is not None else ""
        cluster = ""
        if self.node_id is not None:
            seed_list = ", ".join(f'"{s}"' for s in seeds)
            cluster = (f'[cluster]\nenabled = true\nbind_port = {self.cluster_port}\nseeds = [{seed_list}]\n'
                       f'keys = ["{KEY}"]\n')
        (self.dir / "config.toml").write_text(
            node_toml(self.http_port, self.ws_port, LIMITS + self.storage + cluster, node_lines=node_lines))

    def launch(self) -> None:
        """Start the process; `ready()` waits until it serves."""
        with open(self.dir / "node.log", "ab") as log:  # its warnings (the first seeds it tries may be down)
            self.proc = start_node(self.dir / "config.toml", stderr=log)

    def ready(self) -> None:
        assert self.proc is not None
        try:
            wait_healthy(self.proc, self.url, timeout=60)
        except RuntimeError:
            raise RuntimeError(f"{self.name} did not start: {(self.dir / 'node.log').read_text()[-2000:]}") from None

    def start(self) -> None:
        self.launch()
        self.ready()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL, as a crash: no hand-over, sockets cut by the kernel."""
        assert self.proc is not None
        self.past_cpu += cpu_seconds(self.proc.pid)
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def get(self, path: str) -> dict:
        """An admin endpoint (loopback needs no admin token when none is configured)."""
        return httpx.get(f"{self.url}{path}", timeout=10).json()

    def statistics(self) -> dict:
        return self.get("/api/admin/node")["statistics"]


def start_all(nodes: list[BenchNode], attempts: int = 3) -> None:
    """Start the nodes at once. A free port found by binding it can be taken by another
    program before the node binds it (the machine is shared): such a node gets new ports
    and starts again. (Its old cluster address stays among the others' seeds; each node
    has another seed to join through.)"""
    for node in nodes:
        node.launch()
    for node in nodes:
        for attempt in range(attempts):
            try:
                node.ready()
                break
            except RuntimeError as exc:
                if "already in use" not in str(exc) or attempt == attempts - 1:
                    raise
                node.pick_ports()
                node.configure(node.seeds)
                node.launch()


def live_view(node: BenchNode) -> set[int]:
    members = node.get("/api/admin/cluster/members")["members"]
    return {m["node_id"] for m in members if m["state"] == "alive"}


def wait_converged(nodes: list[BenchNode], timeout: float = 60.0) -> float:
    """Until every node sees every node alive; returns the seconds waited."""
    want = {n.node_id for n in nodes}
    start = time.monotonic()
    while True:
        try:
            if all(live_view(n) == want for n in nodes):
                return time.monotonic() - start
        except (httpx.TransportError, ValueError, KeyError):
            pass
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"the cluster did not converge within {timeout:.0f} s")
        time.sleep(0.1)


def owner(chat_id: str, nodes: list[BenchNode]) -> int:
    """The node id that sequences a chat while every node is alive (rendezvous hashing,
    the function the nodes themselves use)."""
    return owner_of(int(chat_id), [n.node_id for n in nodes if n.node_id is not None])


def postgres_pids(postmaster: int) -> list[int]:
    """The PostgreSQL server's processes: the postmaster and its children."""
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    pids.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return pids


def set_cpus(nodes: list[BenchNode], postmaster: int, cpus: set[int]) -> None:
    """Move the server side to `cpus`: every core while users and chats are set up (nothing
    is measured then), CPU 0 alone for the measurements. New PostgreSQL backends inherit
    the postmaster's."""
    if (os.cpu_count() or 1) < 2:
        return
    pids = [n.pid for n in nodes if n.proc is not None and n.proc.poll() is None] + postgres_pids(postmaster)
    for pid in pids:
        try:
            for task in os.listdir(f"/proc/{pid}/task"):  # every thread (the nodes' worker threads too)
                os.sched_setaffinity(int(task), cpus)
        except (FileNotFoundError, ProcessLookupError):
            continue


class ServerSide:
    """bench.run's `Server` for a set of nodes and the database: CPU per process
    (`parts`), the measured ones' total (`cpu`), and everything this benchmark runs
    (`all_cpu`, so that an idle configuration does not count as the machine's other load)."""

    def __init__(self, measured: list[BenchNode], everyone: list[BenchNode], postmaster: int) -> None:
        self.measured = measured
        self.everyone = everyone
        self.postmaster = postmaster
        self.settled: list[float] = []  # seconds each `settle` waited

    @property
    def pid(self) -> int:
        return self.measured[-1].pid

    def parts(self) -> dict[str, float]:
        out = {n.name: cpu_seconds(n.pid) for n in self.measured}
        out["postgresql"] = pg_cpu_seconds(self.postmaster)
        return out

    def cpu(self) -> float:
        return sum(self.parts().values())

    def db_cpu(self) -> float:
        return pg_cpu_seconds(self.postmaster)

    def settle(self, loop: Loop | None = None, *, at_least: float = 2.5, idle_pct: float = 10.0,
               timeout: float = 20.0) -> float:
        """Wait, serving `loop`'s sockets meanwhile, until `at_least` seconds have passed and
        then the whole server side (both configurations) has used less than `idle_pct` % of
        a core for half a second; returns the seconds waited. Presence is announced `grace`
        (2 s) after devices come or go, with reads per user: a phase that starts by
        connecting hundreds of devices (or right after others left) would otherwise measure
        that burst."""
        start = time.perf_counter()
        while True:
            before, t0 = self.all_cpu(), time.perf_counter()
            if loop is not None:
                loop.run(t0 + 0.5)
            else:
                time.sleep(0.5)
            busy = 100 * (self.all_cpu() - before) / (time.perf_counter() - t0)
            waited = time.perf_counter() - start
            if (waited >= at_least and busy < idle_pct) or waited >= timeout:
                self.settled.append(waited)
                return waited

    def all_cpu(self) -> float:
        total = pg_cpu_seconds(self.postmaster)
        for node in self.everyone:
            total += node.past_cpu
            if node.proc is not None and node.proc.poll() is None:
                total += cpu_seconds(node.pid)
        return total
