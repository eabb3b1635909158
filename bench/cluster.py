"""`make bench`, last: a three-node cluster beside a single node, both on PostgreSQL, in one run.

Three `chatnode serve` nodes form a cluster and a fourth runs alone (bench/cluster_nodes.py),
on one private PostgreSQL (fsync on), each configuration with its own database. As in
bench/run.py the server side is pinned to CPU 0 and the load generator (bench/rawws.py) to
CPU 1: whichever configuration is measured, its nodes and the database share one core, so
the cluster's figures show what routing between nodes costs, and its CPU per message per
node shows what each node's part costs (the basis of the sizing in bench/README.md).

1. 1-1: each pair's sender is on node 1, its recipient on node 2, and its chat is owned by
   node 3 (rendezvous hashing: node/cluster/ownership.py), so every message crosses three
   nodes. Throughput (closed loop, bench.run.throughput) and send-to-receive latency at
   fixed rates, one message per frame (bench.run.latency); the single node gets the same.
2. Groups (bench.groups.measure): the sender on node 1, the group owned by node 3, the
   members spread over the three nodes.
3. Kill-to-served (bench/cluster_kill.py): one round per repetition, the victim in turn.

Repetitions interleave the configurations (in alternating order); every figure is the
median over repetitions, ratios are taken within a repetition, and every measurement
records how much CPU the rest of the machine used (`others_cpu_pct`, % of one core). Each
phase starts once the server side is quiet (`ServerSide.settle`). Results go to
bench/results/cluster.json; a run takes about 6 minutes on 2 vCPUs.

    python -m bench.cluster [--runs 3] [--seconds 3] [--pairs 100] [--latency-pairs 100]
                            [--rates 500] [--groups 100,500] [--kill-devices 50]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench import groups as group_bench
from bench.cluster_kill import KillRound
from bench.cluster_nodes import BenchNode, ServerSide, owner, set_cpus, start_all, wait_converged
from bench.run import PASSWORD, RESULTS, Others, latency, pin, postmaster_pid, private_postgres, throughput
from node.client import ChatClient

SENDER, RECIPIENT, OWNER = 1, 2, 3  # node ids: each 1-1 message crosses all three


class Config:
    """One configuration under test: its nodes, its database, its users and chats."""

    def __init__(self, name: str, nodes: list[BenchNode], dsn: str) -> None:
        self.name = name
        self.nodes = nodes
        self.dsn = dsn
        self.dbname = dict(part.split("=", 1) for part in dsn.split())["dbname"]
        self.tokens: list[str] = []
        self.ids: list[str] = []
        self.pairs: list[tuple[str, str, str]] = []  # (sender token, recipient token, chat)
        self.kill_pairs: list[tuple[str, str, str]] = []
        self.groups: dict[int, str] = {}  # members -> chat id

    @property
    def clustered(self) -> bool:
        return len(self.nodes) > 1

    def node(self, node_id: int) -> BenchNode:
        return next(n for n in self.nodes if n.node_id == node_id) if self.clustered else self.nodes[0]

    @property
    def url(self) -> str:
        return self.nodes[0].url


# -- setting up users and chats ------------------------------------------------------------

async def register(config: Config, users: int) -> None:
    config.tokens, config.ids = [""] * users, [""] * users
    limiter = trio.CapacityLimiter(32)

    async def one(i: int) -> None:
        async with limiter, ChatClient(config.url) as c:
            await c.register(f"user{i}", PASSWORD)
            await c.login(f"user{i}", PASSWORD)
            config.tokens[i], config.ids[i] = c.token, c.user["id"]

    async with trio.open_nursery() as nursery:
        for i in range(users):
            nursery.start_soon(one, i)


async def direct(config: Config, a: int, b: int) -> str:
    async with ChatClient(config.url, token=config.tokens[a]) as c:
        return (await c.open_direct(user_id=config.ids[b]))["id"]


async def make_pairs(config: Config, count: int) -> None:
    """Sender i (of the first half of the users) with a recipient of the second half. In the
    cluster, a recipient is kept only if node OWNER owns their chat: about one try in three."""
    half = len(config.tokens) // 2
    free = list(range(half, len(config.tokens)))
    pairs: list[tuple[str, str, str] | None] = [None] * count
    limiter = trio.CapacityLimiter(16)

    async def one(i: int) -> None:
        tried: set[int] = set()
        async with limiter:
            while True:
                j = next((j for j in free if j not in tried), None)
                if j is None:
                    raise RuntimeError("not enough recipients for the pairs")
                free.remove(j)
                chat = await direct(config, i, j)
                if not config.clustered or owner(chat, config.nodes) == OWNER:
                    pairs[i] = (config.tokens[i], config.tokens[j], chat)
                    return
                tried.add(j)
                free.append(j)  # not this one: another sender may take them

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
    config.pairs = pairs  # type: ignore[assignment]


async def make_groups(config: Config, sizes: list[int]) -> None:
    """A group of the first `size` users for each size, created by user 0 (the sender);
    in the cluster, created again until node OWNER owns it."""
    async with ChatClient(config.url, token=config.tokens[0]) as c:
        for size in sizes:
            for _ in range(30):
                chat = (await c.create_group(f"bench {size}", members=config.ids[1:size]))["id"]
                if not config.clustered or owner(chat, config.nodes) == OWNER:
                    config.groups[size] = chat
                    break
            else:
                raise RuntimeError("no group owned by the chosen node")


async def setup(config: Config, users: int, pairs: int, sizes: list[int], kill_devices: int) -> None:
    started = time.monotonic()
    await register(config, users)
    registered = time.monotonic()
    await make_pairs(config, pairs)
    await make_groups(config, sizes)
    print(f"{config.name}: {users} users registered in {registered - started:.0f} s, chats made in "
          f"{time.monotonic() - registered:.0f} s", flush=True)
    if config.clustered and kill_devices:
        # users 2k and 2k+1 (senders both, so never paired above): owners fall where they may
        chats = [await direct(config, 2 * k, 2 * k + 1) for k in range(kill_devices)]
        config.kill_pairs = [(config.tokens[2 * k], config.tokens[2 * k + 1], chat) for k, chat in enumerate(chats)]


def cursors(config: Config, pg: Any) -> dict[str, dict[str, int]]:
    """Per token, every chat of the user where its log ends now: a device that says
    `hello` with them is replayed nothing (users take part in several phases, and what an
    earlier phase sent must not be replayed during a later one). Read from the database
    in one query, as asking each user's chats over HTTP would take longer than a phase."""
    token_of = {int(user): token for user, token in zip(config.ids, config.tokens, strict=True)}
    out: dict[str, dict[str, int]] = {}
    for user, chat, seq in pg.execute("SELECT m.user_id, c.id, c.last_seq FROM members m JOIN chats c "
                                      "ON c.id = m.chat_id WHERE c.last_seq > 0", config.dbname):
        if user in token_of:
            out.setdefault(token_of[user], {})[str(chat)] = seq
    return out


# -- what the node and the database did meanwhile --------------------------------------------

def counters(config: Config, pg: Any) -> dict[str, Any]:
    """Messages stored, WAL flushes and bytes (the whole server: the other configuration is
    idle), and per node: commits, link messages and frames."""
    stored = pg.execute("SELECT count(*) FROM messages", config.dbname)[0][0]
    wal = pg.execute("SELECT wal_records, wal_bytes, wal_sync FROM pg_stat_wal")[0]
    nodes = {}
    for node in config.nodes:
        stats = node.statistics()
        links = stats.get("routing", {}).get("links", {}).get("peers", {})
        nodes[node.name] = {"commits": stats["storage"]["commits"],
                            "link_messages": sum(p["sent"] for p in links.values()),
                            "link_frames": sum(p["frames"] for p in links.values())}
    return {"stored": stored, "wal_records": wal[0], "wal_bytes": int(wal[1]), "wal_syncs": wal[2], "nodes": nodes}


def per_message(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    messages = max(1, after["stored"] - before["stored"])
    out = {"messages": messages,
           "wal_syncs_per_msg": (after["wal_syncs"] - before["wal_syncs"]) / messages,
           "wal_bytes_per_msg": (after["wal_bytes"] - before["wal_bytes"]) / messages,
           "commits_per_msg": sum(after["nodes"][n]["commits"] - b["commits"] for n, b in before["nodes"].items())
           / messages}
    link_messages = sum(after["nodes"][n]["link_messages"] - b["link_messages"] for n, b in before["nodes"].items())
    link_frames = sum(after["nodes"][n]["link_frames"] - b["link_frames"] for n, b in before["nodes"].items())
    if link_messages:
        out["link_messages_per_msg"] = link_messages / messages
        out["link_messages_per_frame"] = link_messages / max(1, link_frames)
    return out


# -- the phases --------------------------------------------------------------------------

def one_to_one(config: Config, server: ServerSide, args: argparse.Namespace, pg: Any) -> dict[str, Any]:
    sender_ws, recipient_ws = config.node(SENDER).ws_url, config.node(RECIPIENT).ws_url
    pairs = config.pairs[: args.pairs]
    before = counters(config, pg)
    t = throughput(server, sender_ws, pairs, window=args.window, batch=args.batch, seconds=args.seconds,
                   receiver_ws_url=recipient_ws, cursors=cursors(config, pg), settle=server.settle)
    t.update(per_message(before, counters(config, pg)))
    t["cpu_us_per_msg_by_part"] = {name: 1e4 * pct / max(1.0, t["delivered_per_s"])
                                   for name, pct in t["cpu_pct_by_part"].items()}
    out: dict[str, Any] = {"throughput": t, "latency": {}}
    for rate in args.rates:
        before = counters(config, pg)
        lat = latency(server, config.url, sender_ws, config.pairs[: args.latency_pairs], rate=rate,
                      seconds=args.seconds, receiver_ws_url=recipient_ws, cursors=cursors(config, pg),
                      settle=server.settle)
        lat.update(per_message(before, counters(config, pg)))
        out["latency"][str(rate)] = lat
        time.sleep(1.0)  # let the nodes drain
    return out


def group(config: Config, server: ServerSide, size: int, args: argparse.Namespace, pg: Any) -> dict[str, Any]:
    chat = config.groups[size]
    if config.clustered:
        ws_urls = [config.node(n).ws_url for n in (SENDER, RECIPIENT, OWNER)]
    else:
        ws_urls = [config.nodes[0].ws_url]
    others = Others(server)
    result = group_bench.measure(server, ws_urls, config.tokens[:size], chat, rate=args.group_rate,
                                 seconds=args.seconds, window=args.window, pause=0.0, drain=1.0,
                                 cursors=cursors(config, pg),
                                 settle=server.settle)
    return {**result, **others.result()}


def kill_round(cluster: Config, server: ServerSide, victim: BenchNode, pg: Any) -> dict[str, Any]:
    others = Others(server)
    result = KillRound(victim, cluster.nodes, cluster.kill_pairs, cursors(cluster, pg)).run(settle=server.settle)
    result.update(others.result())
    victim.start()
    result["rejoined_s"] = wait_converged(cluster.nodes)
    time.sleep(0.5)  # chats move back to the restarted node (the next phase settles too)
    return result


# -- figures -----------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float | None:
    ordered = sorted(v for v in values if v is not None)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else None


def med(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("cluster", "single"):
        thr = [r[name]["one_to_one"]["throughput"] for r in runs]
        s: dict[str, Any] = {
            "delivered_per_s": med([t["delivered_per_s"] for t in thr]),
            "server_cpu_us_per_msg": med([t["server_cpu_us_per_msg"] for t in thr]),
            "cpu_us_per_msg_by_part": {part: med([t["cpu_us_per_msg_by_part"][part] for t in thr])
                                       for part in thr[0]["cpu_us_per_msg_by_part"]},
            "wal_syncs_per_msg": med([t["wal_syncs_per_msg"] for t in thr]),
            "wal_bytes_per_msg": med([t["wal_bytes_per_msg"] for t in thr]),
            "commits_per_msg": med([t["commits_per_msg"] for t in thr]),
            "throughput_others_cpu_pct": med([t["others_cpu_pct"] for t in thr]),
            "latency": {}, "groups": {},
        }
        if "link_messages_per_msg" in thr[0]:
            s["link_messages_per_msg"] = med([t["link_messages_per_msg"] for t in thr])
            s["link_messages_per_frame"] = med([t["link_messages_per_frame"] for t in thr])
        for rate in map(str, args.rates):
            lat = [r[name]["one_to_one"]["latency"][rate] for r in runs]
            s["latency"][rate] = {k: med([x.get(k) for x in lat])
                                  for k in ("p50_ms", "p99_ms", "server_cpu_pct", "others_cpu_pct", "commits_per_msg",
                                            "wal_syncs_per_msg", "link_messages_per_msg", "link_messages_per_frame")}
        for size in map(str, args.groups):
            g = [r[name]["groups"][size] for r in runs]
            s["groups"][size] = {k: med([x.get(k) for x in g])
                                 for k in ("last_member_p50_ms", "last_member_p99_ms", "group_msgs_per_s",
                                           "deliveries_per_s", "server_cpu_pct", "others_cpu_pct")}
        out[name] = s

    def ratio(get) -> float | None:
        values = [get(r["cluster"]) / get(r["single"]) for r in runs if get(r["single"])]
        return med(values)

    out["cluster_over_single"] = {
        "delivered_per_s": ratio(lambda c: c["one_to_one"]["throughput"]["delivered_per_s"]),
        "server_cpu_us_per_msg": ratio(lambda c: c["one_to_one"]["throughput"]["server_cpu_us_per_msg"]),
        **{f"{q}_at_{rate}": ratio(lambda c, r=str(rate), q=q: c["one_to_one"]["latency"][r][f"{q}_ms"])
           for rate in args.rates for q in ("p50", "p99")},
        **{f"group_{size}_msgs_per_s": ratio(lambda c, s=str(size): c["groups"][s]["group_msgs_per_s"])
           for size in args.groups},
        **{f"group_{size}_p99": ratio(lambda c, s=str(size): c["groups"][s]["last_member_p99_ms"])
           for size in args.groups},
    }
    kills = [r["kill"] for r in runs if "kill" in r]
    if kills:
        devices = [d for k in kills for d in k["devices"]]

        def figures(subset: list[dict[str, Any]]) -> dict[str, Any]:
            return {"devices": len(subset),
                    **{f"{what}_{q}_s": pct([d[f"{what}_s"] for d in subset], p)
                       for what in ("reconnected", "synced", "served") for q, p in (("p50", 0.5), ("p99", 0.99))}}

        out["kill"] = {"rounds": len(kills), "not_served": sum(k["not_served"] for k in kills),
                       "all": figures(devices),
                       "chat_owned_by_victim": figures([d for d in devices if d["owned_by_victim"]]),
                       "chat_owned_elsewhere": figures([d for d in devices if not d["owned_by_victim"]]),
                       "rejoined_s": med([k["rejoined_s"] for k in kills]),
                       "others_cpu_pct": med([k["others_cpu_pct"] for k in kills])}
    out["others_cpu_pct"] = med([x["others_cpu_pct"] for r in runs for name in ("cluster", "single")
                                 for x in [r[name]["one_to_one"]["throughput"],
                                           *r[name]["one_to_one"]["latency"].values(), *r[name]["groups"].values()]])
    return out


def table(summary: dict[str, Any], args: argparse.Namespace) -> str:
    c, s, ratio = summary["cluster"], summary["single"], summary["cluster_over_single"]

    def f(v: float | None, fmt: str = "{:,.0f}") -> str:
        return "-" if v is None else fmt.format(v)

    rows = [(f"1-1 messages delivered per second ({args.pairs} pairs, {args.window} in flight, {args.batch} per frame)",
             f(c["delivered_per_s"]), f(s["delivered_per_s"]), f(ratio["delivered_per_s"], "{:.2f}")),
            ("server CPU per delivered message (all nodes and PostgreSQL)",
             f(c["server_cpu_us_per_msg"]) + " µs", f(s["server_cpu_us_per_msg"]) + " µs",
             f(ratio["server_cpu_us_per_msg"], "{:.2f}")),
            ("… of which per process",
             ", ".join(f"{k} {v:.0f}" for k, v in c["cpu_us_per_msg_by_part"].items()) + " µs",
             ", ".join(f"{k} {v:.0f}" for k, v in s["cpu_us_per_msg_by_part"].items()) + " µs", ""),
            ("… node commits, WAL flushes and WAL bytes per message",
             f"{c['commits_per_msg']:.4f}, {c['wal_syncs_per_msg']:.4f}, {c['wal_bytes_per_msg']:,.0f} B",
             f"{s['commits_per_msg']:.4f}, {s['wal_syncs_per_msg']:.4f}, {s['wal_bytes_per_msg']:,.0f} B", "")]
    if "link_messages_per_msg" in c:
        rows.append(("inter-node messages per 1-1 message (per link frame)",
                     f"{c['link_messages_per_msg']:.2f} ({c['link_messages_per_frame']:.1f})", "-", ""))
    for rate in map(str, args.rates):
        lc, ls = c["latency"][rate], s["latency"][rate]
        rows.append((f"1-1 send-to-receive at {rate} msg/s, one per frame: p50 / p99 (server CPU)",
                     f"{f(lc['p50_ms'], '{:.1f}')} / {f(lc['p99_ms'], '{:.1f}')} ms ({f(lc['server_cpu_pct'])} %)",
                     f"{f(ls['p50_ms'], '{:.1f}')} / {f(ls['p99_ms'], '{:.1f}')} ms ({f(ls['server_cpu_pct'])} %)",
                     f"{f(ratio[f'p50_at_{rate}'], '{:.2f}')} / {f(ratio[f'p99_at_{rate}'], '{:.2f}')}"))
        rows.append((f"… at {rate} msg/s: node commits and WAL flushes per message",
                     f"{f(lc['commits_per_msg'], '{:.2f}')}, {f(lc['wal_syncs_per_msg'], '{:.2f}')}",
                     f"{f(ls['commits_per_msg'], '{:.2f}')}, {f(ls['wal_syncs_per_msg'], '{:.2f}')}", ""))
    for size in map(str, args.groups):
        gc, gs = c["groups"][size], s["groups"][size]
        rows.append((f"{size}-member group, last member at {args.group_rate:g} msg/s: p50 / p99",
                     f"{f(gc['last_member_p50_ms'], '{:.1f}')} / {f(gc['last_member_p99_ms'], '{:.1f}')} ms",
                     f"{f(gs['last_member_p50_ms'], '{:.1f}')} / {f(gs['last_member_p99_ms'], '{:.1f}')} ms",
                     f"- / {f(ratio[f'group_{size}_p99'], '{:.2f}')}"))
        rows.append((f"{size}-member group messages fanned out per second ({args.window} in flight; deliveries/s)",
                     f"{f(gc['group_msgs_per_s'])} ({f(gc['deliveries_per_s'])})",
                     f"{f(gs['group_msgs_per_s'])} ({f(gs['deliveries_per_s'])})",
                     f(ratio[f"group_{size}_msgs_per_s"], "{:.2f}")))
    rows.append(("CPU used by other processes while measuring (% of one core)",
                 f(summary["others_cpu_pct"]) + " %", "", ""))
    out = f"| figure (median of {args.runs} runs) | 3 nodes | 1 node | 3 nodes ÷ 1 node |\n| --- | --- | --- | --- |\n"
    out += "".join(f"| {a} | {b} | {c_} | {d} |\n" for a, b, c_, d in rows)
    k = summary.get("kill")
    if k:
        out += (f"\n| kill -9 of one node of three: seconds from the kill ({k['rounds']} rounds × "
                f"{args.kill_devices} devices; p50 / p99) | welcomed elsewhere | synced | served |\n"
                "| --- | --- | --- | --- |\n")
        for label, key in (("all devices", "all"), ("chat owned by the killed node", "chat_owned_by_victim"),
                           ("chat owned by a survivor", "chat_owned_elsewhere")):
            x = k[key]
            cells = [f"{f(x[f'{w}_p50_s'], '{:.2f}')} / {f(x[f'{w}_p99_s'], '{:.2f}')}"
                     for w in ("reconnected", "synced", "served")]
            out += f"| {label} ({x['devices']}) | " + " | ".join(cells) + " |\n"
        out += (f"\nnot served within 30 s: {k['not_served']}; the killed node rejoined {k['rejoined_s']:.1f} s after "
                f"its restart (median); others' CPU during the rounds: {k['others_cpu_pct']:.0f} %\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measurement window")
    parser.add_argument("--pairs", type=int, default=100, help="1-1 pairs for throughput")
    parser.add_argument("--window", type=int, default=10, help="messages in flight per sender (and per group sender)")
    parser.add_argument("--batch", type=int, default=10, help="messages per frame in the 1-1 throughput")
    parser.add_argument("--latency-pairs", type=int, default=100)
    parser.add_argument("--rates", default="500", help="offered 1-1 rates (msg/s) for the latency figure")
    parser.add_argument("--groups", default="100,500", help="group sizes")
    parser.add_argument("--group-rate", type=float, default=10.0,
                        help="group messages per second for the latency figure")
    parser.add_argument("--kill-devices", type=int, default=50,
                        help="devices on the killed node; 0 skips the kill rounds")
    args = parser.parse_args()
    args.rates = [int(r) for r in args.rates.split(",") if r]
    args.groups = [int(g) for g in args.groups.split(",") if g]
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pin(1)
    started = time.monotonic()
    pairs = max(args.pairs, args.latency_pairs)
    users = max(*args.groups, 2 * pairs + 100, 4 * args.kill_devices)
    runs: list[dict[str, Any]] = []
    with private_postgres() as pg, tempfile.TemporaryDirectory(prefix="chatnode-bench-") as tmp:
        root = Path(tmp)
        storage = 'engine = "postgresql"\ndsn = "{}"\n'
        cluster_dsn, single_dsn = pg.create_database(), pg.create_database()
        nodes = [BenchNode(root, f"n{i}", "[storage]\n" + storage.format(cluster_dsn), node_id=i) for i in (1, 2, 3)]
        single_node = BenchNode(root, "single", "[storage]\n" + storage.format(single_dsn))
        for node in nodes:
            node.configure([n.cluster_address for n in nodes if n is not node])
        single_node.configure([])
        everyone = [*nodes, single_node]
        try:
            start_all(everyone)  # all at once: each takes seconds to import and open its database
            print(f"nodes started in {time.monotonic() - started:.0f} s; the cluster converged in "
                  f"{wait_converged(nodes):.1f} s", flush=True)
            cluster, single = Config("cluster", nodes, cluster_dsn), Config("single", [single_node], single_dsn)
            postmaster = postmaster_pid(pg)
            servers = {"cluster": ServerSide(nodes, everyone, postmaster),
                       "single": ServerSide([single_node], everyone, postmaster)}

            async def set_up_both() -> None:
                async with trio.open_nursery() as nursery:
                    for config in (cluster, single):
                        nursery.start_soon(setup, config, users, pairs, args.groups, args.kill_devices)

            set_cpus(everyone, postmaster, set(range(os.cpu_count() or 1)))
            trio.run(set_up_both)
            set_cpus(everyone, postmaster, {0})
            print(f"set up in {time.monotonic() - started:.0f} s: {users} users, {pairs} pairs, groups {args.groups}",
                  flush=True)
            for run in range(args.runs):
                order = (cluster, single) if run % 2 == 0 else (single, cluster)
                result: dict[str, Any] = {c.name: {"groups": {}} for c in order}
                for config in order:
                    result[config.name]["one_to_one"] = one_to_one(config, servers[config.name], args, pg)
                    print(f"[{time.monotonic() - started:.0f} s] run {run + 1} {config.name}: 1-1 "
                          f"{result[config.name]['one_to_one']}", flush=True)
                for size in args.groups:
                    for config in order:
                        g = group(config, servers[config.name], size, args, pg)
                        result[config.name]["groups"][str(size)] = g
                        print(f"[{time.monotonic() - started:.0f} s] run {run + 1} {config.name}: group {g}",
                              flush=True)
                if args.kill_devices:
                    result["kill"] = kill_round(cluster, servers["cluster"], nodes[run % 3], pg)
                    k = result["kill"]
                    print(f"[{time.monotonic() - started:.0f} s] run {run + 1}: kill n{k['victim']}: not served "
                          f"{k['not_served']}, "
                          f"served p50 {pct([d['served_s'] for d in k['devices']], 0.5)} s", flush=True)
                runs.append(result)
        finally:
            for node in everyone:
                node.stop()
    summary = summarize(runs, args)
    report = {"summary": summary, "runs": runs, "args": vars(args), "cpus": os.cpu_count(),
              "settle_seconds": {name: server.settled for name, server in servers.items()},
              "wall_seconds": time.monotonic() - started, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cluster.json").write_text(json.dumps(report, indent=2))
    print("\n" + table(summary, args))
    print(f"wall time {report['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
