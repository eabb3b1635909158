"""A node dies (kill -9) under load, several times: nothing acknowledged is lost.

Three `chatnode serve` processes share a private PostgreSQL. Users are spread over the
nodes, each device knows every node and reconnects (to the next one, with backoff) when
its node goes; senders keep sending throughout, retrying unacknowledged sends with the
same client_msg_id. Each round kills a node at a random moment (after a random number of
acknowledged sends), lets the others serve some more, restarts it, and checks:
every acknowledged message is stored exactly once, every device received every message
of its chats exactly once and in order, with no gap. The counts of every round are
written to test-artifacts/cluster_kill_rounds.json.
"""

from __future__ import annotations

import json
import os
import random
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import PASSWORD, storage_toml
from harness import ARTIFACTS, Device, NodeProcess, acked, check, until_acked

from node.client import ChatClient, ClientError

pytestmark = pytest.mark.engine("postgresql")  # a cluster keeps its state in PostgreSQL

ROUNDS = int(os.environ.get("CHATNODE_KILL_ROUNDS", "3"))


async def run_cluster_under_kills(tmp_path: Path, *, polite: bool = False) -> list[dict[str, Any]]:
    """Rounds of load during which one node goes: killed (-9), or stopped politely
    (SIGTERM) in turn, as a rolling restart does."""
    storage = storage_toml(tmp_path / "cluster-db")
    first = NodeProcess(tmp_path, 1, [], storage)
    nodes = [first] + [NodeProcess(tmp_path, i, [first.cluster_address], storage) for i in (2, 3)]
    await first.start()
    for node in nodes[1:]:
        await node.start()
    urls = [n.url for n in nodes]
    rng = random.Random(int(os.environ.get("CHATNODE_KILL_SEED", "7")))
    rounds: list[dict[str, Any]] = []
    retries = 0  # `unavailable` answers the senders had to retry
    retry_reasons: list[str] = []  # what those answers said (the last few are reported)
    try:
        devices: list[Device] = []
        for i in range(6):  # six users, two per node
            home = urls[i % 3:] + urls[:i % 3]
            client = ChatClient(home)
            await client.register(f"user{i}", PASSWORD)
            await client.login(f"user{i}", PASSWORD)
            devices.append(Device(client))
        chats = []
        for i in range(0, 6, 2):  # pairs across nodes: 0-1, 2-3, 4-5
            chat = await devices[i].client.open_direct(username=f"user{i + 1}")
            chats.append((devices[i], devices[i + 1], chat["id"]))
        async with trio.open_nursery() as nursery:
            for device in devices:
                await nursery.start(device.run)
            for round_ in range(ROUNDS):
                sent_before = acked(devices)
                stop = trio.Event()

                def count(tag: str, _sent: float, error: ClientError | None) -> None:
                    nonlocal retries
                    if error is not None:
                        retries += 1
                        retry_reasons.append(f"{tag}: {error}")

                async def sender(device: Device, chat_id: str, tag: str, stop: trio.Event = stop) -> None:
                    n = 0
                    while not stop.is_set():
                        cmid = f"{tag}-{n}"
                        with trio.fail_after(30):
                            ack = await device.conn.send_until_acked(chat_id, cmid, client_msg_id=cmid,
                                                                     on_answer=partial(count, tag), max_backoff=0.1)
                        device.acked[cmid] = (chat_id, ack["seq"])
                        n += 1

                async with trio.open_nursery() as load:
                    for i, (a, b, chat_id) in enumerate(chats):
                        load.start_soon(sender, a, chat_id, f"r{round_}-c{i}-a")
                        load.start_soon(sender, b, chat_id, f"r{round_}-c{i}-b")
                    await until_acked(devices, rng.randint(20, 80))  # load runs for a random number of acks, then ...
                    if polite:
                        victim = nodes[round_ % 3]  # ... the next node is restarted
                        await victim.stop()
                    else:
                        victim = nodes[rng.randrange(3)]
                        victim.kill()  # ... one node dies mid-flight
                        await victim.wait()
                    await until_acked(devices, rng.randint(20, 80))  # the others serve while it is down
                    await victim.start()
                    await until_acked(devices, 20)  # and on once it is back
                    stop.set()
                acked_now = acked(devices)
                rounds.append({"round": round_ + 1, "killed": victim.node_id, "acked": acked_now - sent_before,
                               "retried": retries, "retry_reasons": retry_reasons[-5:]})
            report = await check(devices, [((a, b), chat_id) for a, b, chat_id in chats], urls)
            report["reconnects"] = sum(d.conn.reconnects for d in devices)
            for entry in rounds:
                entry.update(report)
            nursery.cancel_scope.cancel()
    finally:
        for node in nodes:
            await node.stop()
    return rounds


async def test_kill_9_under_load_loses_nothing(tmp_path):
    with trio.fail_after(240):
        rounds = await run_cluster_under_kills(tmp_path)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "cluster_kill_rounds.json").write_text(json.dumps(rounds, indent=2))
    assert rounds and all(r["acked"] > 0 for r in rounds), rounds
    final = rounds[-1]
    assert final["lost"] == 0 and final["duplicated_in_log"] == 0, final
    assert final["duplicate_deliveries"] == 0 and final["out_of_order"] == 0 and final["undelivered"] == 0, final


async def test_a_rolling_restart_costs_clients_only_a_reconnect(tmp_path):
    """Each node in turn is stopped politely under load and started again: it hands its
    chats over and passes on what still reaches it, so at most a few sends meet a retried
    `unavailable` (under load, while views of the membership settle), and nothing is lost,
    repeated or reordered."""
    with trio.fail_after(240):
        rounds = await run_cluster_under_kills(tmp_path, polite=True)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "cluster_rolling_restart.json").write_text(json.dumps(rounds, indent=2))
    final = rounds[-1]
    assert all(r["acked"] > 0 for r in rounds), rounds
    assert final["lost"] == 0 and final["duplicated_in_log"] == 0, final
    assert final["duplicate_deliveries"] == 0 and final["out_of_order"] == 0 and final["undelivered"] == 0, final
    # the stopping node hands over, and what is sent to it once it is back is answered by its new
    # life; under load a member may still be taken for gone for a moment: a few retried sends
    assert final["retried"] <= 5, [r["retry_reasons"] for r in rounds]
    assert final["reconnects"] > 0, final  # the devices of each stopped node did move
