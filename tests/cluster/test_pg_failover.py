"""PostgreSQL fails over under a live three-node cluster: nothing acknowledged is lost.

A private primary with a synchronous standby (confirmed ``sync`` in pg_stat_replication)
and three `chatnode serve` processes that reach it through a multi-host DSN
(``target_session_attrs=read-write``). Devices on every node send under load, in 1-1
chats and a group spanning the nodes, retrying unacknowledged sends with the same
client_msg_id. Each round kills the primary's postmaster (SIGKILL) at a random moment,
promotes the standby a moment later and, as Patroni does when no other standby is left,
clears ``synchronous_standby_names`` on it so that it commits alone; the load keeps
running. Then it checks: every acknowledged message is stored exactly once with its
acknowledged seq (no false ack), every device received every message of its chats once
and in order, and a send during the gap was answered ``unavailable`` and nothing else.
Between rounds a new standby is cloned from the new primary on the old one's port, so
the nodes' DSN names the pair again.

The counts and timings of every round go to test-artifacts/cluster_pg_failover.json;
``CHATNODE_PG_FAILOVER_ROUNDS`` sets the number of rounds (``CHATNODE_PG_FAILOVER_SEED``
the random moments).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import PASSWORD
from harness import ARTIFACTS, Chat, Device, NodeProcess, check
from pgserver import PgServer

from node.client import ChatClient, ClientError

pytestmark = pytest.mark.engine("postgresql")

ROUNDS = int(os.environ.get("CHATNODE_PG_FAILOVER_ROUNDS", "2"))
RECOVERY_TIMEOUT = 60.0  # seconds every sender may take to be acknowledged again after a kill


class Database:
    """A primary and its synchronous standby, kept the way Patroni keeps them."""

    def __init__(self) -> None:
        self.primary = PgServer().start()
        self.dbname = self.primary.create_database().rsplit("dbname=", 1)[1]
        self.ports = (self.primary.port, 0)  # the DSN's two hosts, fixed for the whole test
        self.standby: PgServer | None = None
        self.standbys = 0
        self.add_standby()
        self.ports = (self.primary.port, self.standby.port)  # type: ignore[union-attr]

    def dsn(self) -> str:
        return (f"host=127.0.0.1,127.0.0.1 port={self.ports[0]},{self.ports[1]} user=chat dbname={self.dbname} "
                "target_session_attrs=read-write")

    def add_standby(self) -> None:
        """Clone a standby from the primary, on whichever of the DSN's ports the primary
        does not use, and make it the synchronous one; returns once it is `sync`."""
        self.standbys += 1
        name = f"standby{self.standbys}"
        port = next((p for p in self.ports if p and p != self.primary.port), 0)
        standby = self.primary.replica(name, port=port)
        with open(standby.data / "postgresql.auto.conf", "a") as conf:
            # what a copy of the primary's configuration carries, and stale once it is promoted
            conf.write(f"synchronous_standby_names = '{name}'\n")
        self.standby = standby.start()
        self.primary.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{name}'")
        self.primary.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 60
        while self.primary.execute("SELECT sync_state, state FROM pg_stat_replication "
                                   f"WHERE application_name = '{name}'") != [("sync", "streaming")]:
            assert time.monotonic() < deadline, f"{name} never became the synchronous standby"
            time.sleep(0.05)

    def kill_primary(self) -> None:
        self.primary.kill()

    def promote(self) -> None:
        """Promote the standby and let it commit alone (no standby is left to wait for)."""
        assert self.standby is not None
        self.standby.promote()
        self.standby.execute("ALTER SYSTEM SET synchronous_standby_names = ''")
        self.standby.execute("SELECT pg_reload_conf()")
        self.primary.destroy()  # its data dir: a crashed primary is re-cloned, not reused
        self.primary, self.standby = self.standby, None

    def destroy(self) -> None:
        for server in (self.primary, self.standby):
            if server is not None:
                server.destroy()


class Sender:
    """Sends one message after another into a chat, each retried with the same
    client_msg_id until it is acknowledged, as a real client does; only `unavailable`
    is retryable."""

    def __init__(self, device: Device, chat_id: str, tag: str) -> None:
        self.device = device
        self.chat_id = chat_id
        self.tag = tag
        self.sent = 0
        self.unavailable = 0  # `unavailable` answers
        self.acks: list[tuple[float, float]] = []  # (when the acknowledged attempt was sent, when its ack came)

    async def run(self, stop: trio.Event) -> None:
        while not stop.is_set():
            cmid = f"{self.tag}-{self.sent}"
            while True:
                attempt = trio.current_time()
                try:
                    with trio.fail_after(30):
                        ack = await self.device.conn.send_text(self.chat_id, cmid, client_msg_id=cmid)
                    break
                except ClientError as exc:
                    if exc.code != "unavailable":  # retryable by contract; nothing else is
                        raise
                    self.unavailable += 1
                    await trio.sleep(0.05)
            self.acks.append((attempt, trio.current_time()))
            self.device.acked[cmid] = (self.chat_id, ack["seq"])
            self.sent += 1

    def first_ack_sent_after(self, moment: float) -> float | None:
        """When the first ack came for an attempt sent after `moment`."""
        return next((acked for sent, acked in self.acks if sent >= moment), None)


async def storage_stats(nodes: list[NodeProcess]) -> dict[str, int]:
    """The nodes' PostgreSQL counters, summed."""
    total: dict[str, int] = {}
    async with httpx.AsyncClient() as http:
        for node in nodes:
            stats = (await http.get(f"{node.url}/api/admin/stats", timeout=10)).json()["storage"]
            for key in ("unknown_outcomes", "commit_timeouts", "reconnects"):
                total[key] = total.get(key, 0) + stats[key]
    return total


async def test_postgres_fails_over_under_load_and_loses_nothing(tmp_path: Path) -> None:
    db = await trio.to_thread.run_sync(Database)
    storage = f'[storage]\nengine = "postgresql"\ndsn = "{db.dsn()}"\n'
    first = NodeProcess(tmp_path, 1, [], storage)
    nodes = [first] + [NodeProcess(tmp_path, i, [first.cluster_address], storage) for i in (2, 3)]
    rng = random.Random(int(os.environ.get("CHATNODE_PG_FAILOVER_SEED", "11")))
    rounds: list[dict[str, Any]] = []
    try:
        with trio.fail_after(120 + 90 * ROUNDS):
            for node in nodes:
                await node.start()
            urls = [n.url for n in nodes]
            devices: list[Device] = []
            for i in range(6):  # six users, two per node
                client = ChatClient(urls[i % 3:] + urls[:i % 3])
                await client.register(f"user{i}", PASSWORD)
                await client.login(f"user{i}", PASSWORD)
                devices.append(Device(client))
            chats: list[Chat] = []
            for i in range(0, 6, 2):  # 1-1 chats across nodes: 0-1, 2-3, 4-5
                chat = await devices[i].client.open_direct(username=f"user{i + 1}")
                chats.append(((devices[i], devices[i + 1]), chat["id"]))
            group = await devices[0].client.create_group("everywhere", usernames=["user1", "user2"])
            chats.append(((devices[0], devices[1], devices[2]), group["id"]))  # one member on each node
            async with trio.open_nursery() as nursery:
                for device in devices:
                    await nursery.start(device.run)
                for round_ in range(ROUNDS):
                    rounds.append(await one_round(db, nodes, devices, chats, urls, rng, round_))
                    if round_ + 1 < ROUNDS:
                        await trio.to_thread.run_sync(db.add_standby)
                nursery.cancel_scope.cancel()
    finally:
        for node in nodes:
            await node.stop()
        await trio.to_thread.run_sync(db.destroy)
    summary = {key: round(statistics.median(r[key] for r in rounds), 3)
               for key in ("first_ack_after_kill", "all_acked_after_kill", "first_ack_after_promote",
                           "all_acked_after_promote")}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "cluster_pg_failover.json").write_text(json.dumps({"median": summary, "rounds": rounds}, indent=2))
    for entry in rounds:
        assert entry["acked"] > 0 and entry["acked_during_recovery"] > 0, entry
        assert entry["lost"] == 0 and entry["duplicated_in_log"] == 0, entry
        assert entry["duplicate_deliveries"] == 0 and entry["out_of_order"] == 0 and entry["undelivered"] == 0, entry
    assert sum(r["unavailable"] for r in rounds) > 0, rounds  # sends did meet the gap, and were refused


async def one_round(db: Database, nodes: list[NodeProcess], devices: list[Device], chats: list[Chat],
                    urls: list[str], rng: random.Random, round_: int) -> dict[str, Any]:
    """Load; the primary dies at a random moment and the standby is promoted; the load
    runs on until every sender is acknowledged again. Then the counts of the round."""
    senders = [Sender(device, chat_id, f"r{round_}-c{c}-{d}")
               for c, (members, chat_id) in enumerate(chats) for d, device in enumerate(members)]
    before = await storage_stats(nodes)
    stop = trio.Event()
    async with trio.open_nursery() as load:
        for sender in senders:
            load.start_soon(sender.run, stop)
        await trio.sleep(rng.uniform(0.3, 1.5))  # load runs a random while, then ...
        killed_port = db.primary.port
        unavailable_before = sum(s.unavailable for s in senders)
        killed = trio.current_time()
        await trio.to_thread.run_sync(db.kill_primary)  # ... the primary dies mid-flight
        await trio.sleep(rng.uniform(0.2, 1.0))  # the time a failover manager takes to decide
        await trio.to_thread.run_sync(db.promote)
        promoted = trio.current_time()
        with trio.fail_after(RECOVERY_TIMEOUT):
            while not all(s.first_ack_sent_after(killed) for s in senders):
                await trio.sleep(0.02)
        await trio.sleep(0.5)
        stop.set()
    after = await storage_stats(nodes)
    recovered = [s.first_ack_sent_after(killed) for s in senders]
    first, last = min(recovered), max(recovered)  # type: ignore[type-var]
    report = await check(devices, chats, urls)
    return {
        "round": round_ + 1, "killed_port": killed_port, "promoted_port": db.primary.port,
        "acked": sum(len(s.acks) for s in senders),
        "acked_during_recovery": sum(1 for s in senders for sent, _ in s.acks if sent >= killed),
        "unavailable_before_kill": unavailable_before,
        "unavailable": sum(s.unavailable for s in senders) - unavailable_before,
        "promote_after_kill": round(promoted - killed, 3),
        "first_ack_after_kill": round(first - killed, 3), "all_acked_after_kill": round(last - killed, 3),
        "first_ack_after_promote": round(first - promoted, 3), "all_acked_after_promote": round(last - promoted, 3),
        **{key: after[key] - before[key] for key in after},
        **report,
    }
