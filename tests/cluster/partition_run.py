"""A partition and a pause between real node processes, in a network namespace of its own.

Run by tests/cluster/test_partition.py as ``unshare --net python partition_run.py OUT``:
the namespace's loopback is private to this run, so its routing rules touch nothing else
on the machine. Three ``chatnode serve`` processes share a private PostgreSQL (on
127.0.0.1); each node's cluster traffic uses an address of its own (127.0.0.2, .3, .4,
its streams leave from it too), so a ``blackhole`` routing rule between two addresses
drops exactly the cluster traffic between two nodes while clients and PostgreSQL still
reach all of them.

Devices on every node send throughout (1-1 chats across nodes and a group), retrying
`unavailable` with the same client_msg_id. Then:

1. one node is cut off from the others until both sides have declared each other failed,
   and each side believes it owns the chats (two owners at once) while its clients keep
   sending, until each side has acknowledged some; then the partition heals;
2. one node is paused (SIGSTOP) until the others declare it failed, and while the others
   acknowledge some more; then it is resumed: it wakes up believing it still owns its chats.

The report (JSON, to OUT) counts what was acked, stored and delivered, and whether any
seq was given to two messages (an ack naming a seq another message holds).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent.parent)]

import httpx  # noqa: E402
import trio  # noqa: E402
from harness import Device, NodeProcess, acked, check, until_acked  # noqa: E402
from pgserver import PgServer  # noqa: E402

from node.client import ChatClient, ClientError  # noqa: E402
from node.testing import PASSWORD, wait_until  # noqa: E402


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def cut(host: str, others: list[str]) -> list[tuple[str, str]]:
    """Drop every packet between `host` and `others` (both ways)."""
    rules = [(a, b) for o in others for a, b in ((host, o), (o, host))]
    for a, b in rules:
        ip("rule", "add", "pref", "10", "from", a, "to", b, "blackhole")
    return rules


def heal(rules: list[tuple[str, str]]) -> None:
    for a, b in rules:
        ip("rule", "del", "pref", "10", "from", a, "to", b, "blackhole")


async def live_view(node: NodeProcess) -> int:
    """How many members `node` counts live (its /api/info node list)."""
    async with httpx.AsyncClient() as http:
        return len((await http.get(f"{node.url}/api/info", timeout=5)).json()["nodes"])


async def metric(node: NodeProcess, name: str) -> float:
    """One unlabelled value from the node's /metrics (0 if absent)."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{node.url}/metrics", timeout=5)).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def wait_views(expected: dict[NodeProcess, int], limit: float) -> float:
    """Until every node sees the expected number of live members; returns the time taken."""
    start = trio.current_time()

    async def seen() -> bool:
        return {n: await live_view(n) for n in expected} == expected

    await wait_until(seen, limit, interval=0.1)
    return trio.current_time() - start


async def scenario(root: Path, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    with PgServer() as pg:
        storage = f'[storage]\nengine = "postgresql"\ndsn = "{pg.create_database()}"\n'
        first = NodeProcess(root, 1, [], storage, cluster_host="127.0.0.2")
        nodes = [first] + [NodeProcess(root, i, [first.cluster_address], storage, cluster_host=f"127.0.0.{i + 1}")
                           for i in (2, 3)]
        for node in nodes:
            await node.start()
        await wait_views({n: 3 for n in nodes}, 60)
        urls = [n.url for n in nodes]
        retries = 0
        phases: list[dict[str, Any]] = []
        try:
            devices: list[Device] = []
            for i in range(6):  # six users, two per node
                client = ChatClient(urls[i % 3:] + urls[:i % 3])
                await client.register(f"user{i}", PASSWORD)
                await client.login(f"user{i}", PASSWORD)
                devices.append(Device(client))
            chats = []
            for i in range(0, 6, 2):  # pairs across nodes: 0-1, 2-3, 4-5
                chat = await devices[i].client.open_direct(username=f"user{i + 1}")
                chats.append((devices[i], devices[i + 1], chat["id"]))
            group = await devices[0].client.create_group("all", usernames=[f"user{i}" for i in range(1, 6)])
            chats += [(devices[i], devices[i + 1], group["id"]) for i in range(0, 6, 2)]
            async with trio.open_nursery() as nursery:
                for device in devices:
                    await nursery.start(device.run)
                stop = trio.Event()

                def count(_sent: float, error: ClientError | None) -> None:
                    nonlocal retries
                    retries += error is not None

                async def sender(device: Device, chat_id: str, tag: str) -> None:
                    n = 0
                    while not stop.is_set():
                        cmid = f"{tag}-{n}"
                        with trio.fail_after(60):
                            ack = await device.conn.send_until_acked(chat_id, cmid, client_msg_id=cmid,
                                                                     on_answer=count, max_backoff=0.1)
                        device.acked[cmid] = (chat_id, ack["seq"])
                        n += 1

                async with trio.open_nursery() as load:
                    for i, (a, b, chat_id) in enumerate(chats[:3]):
                        load.start_soon(sender, a, chat_id, f"c{i}-a")
                        load.start_soon(sender, b, chat_id, f"c{i}-b")
                    load.start_soon(sender, devices[1], group["id"], "g-1")
                    load.start_soon(sender, devices[5], group["id"], "g-5")
                    await until_acked(devices, rng.randint(20, 80))  # the load runs for a random number of acks

                    # 1. A partition: one node against the other two, both sides serving.
                    island = nodes[rng.randrange(3)]
                    rest = [n for n in nodes if n is not island]
                    before = acked(devices)
                    rules = cut(island.cluster_host, [n.cluster_host for n in rest])
                    split = await wait_views({island: 1, **{n: 2 for n in rest}}, 60)
                    # two owners for the same chats: each side takes sends
                    await until_acked([d for d in devices if d.client.base_url == island.url], rng.randint(10, 40))
                    await until_acked([d for d in devices if d.client.base_url != island.url], rng.randint(10, 40))
                    heal(rules)
                    merged = await wait_views({n: 3 for n in nodes}, 90)
                    await until_acked(devices, 20)  # and on, merged
                    phases.append({"phase": "partition", "node": island.node_id, "detected_s": round(split, 2),
                                   "merged_s": round(merged, 2), "acked": acked(devices) - before})

                    # 2. A pause: the node wakes up still believing it owns its chats.
                    sleeper = nodes[rng.randrange(3)]
                    before = acked(devices)
                    assert sleeper.proc is not None
                    sleeper.proc.send_signal(signal.SIGSTOP)
                    try:
                        noticed = await wait_views({n: 2 for n in nodes if n is not sleeper}, 60)
                        await until_acked(devices, rng.randint(20, 80))  # the others serve while it sleeps
                    finally:
                        sleeper.proc.send_signal(signal.SIGCONT)
                    back = await wait_views({n: 3 for n in nodes}, 90)
                    await until_acked(devices, 20)  # and on, with it back
                    phases.append({"phase": "pause", "node": sleeper.node_id, "detected_s": round(noticed, 2),
                                   "merged_s": round(back, 2), "acked": acked(devices) - before})
                    stop.set()
                report = await check(devices, [((a, b), chat_id) for a, b, chat_id in chats], urls)
                report["storage_conflicts"] = sum([await metric(n, "chatnode_storage_conflicts") for n in nodes])
                report["retried"] = retries
                report["reconnects"] = sum(d.conn.reconnects for d in devices)
                nursery.cancel_scope.cancel()
        finally:
            for node in nodes:
                await node.stop()
    return {"seed": seed, "phases": phases, **report}


def main() -> None:
    out = Path(sys.argv[1])
    seed = int(os.environ.get("CHATNODE_PARTITION_SEED", "11"))
    ip("link", "set", "lo", "up")
    # Rules of our own come before the local table's (which otherwise answers first).
    ip("rule", "del", "pref", "0")
    ip("rule", "add", "pref", "100", "lookup", "local")
    with tempfile.TemporaryDirectory(prefix="chatnode-partition-") as root:
        report = trio.run(scenario, Path(root), seed)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
