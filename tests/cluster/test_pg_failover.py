"""PostgreSQL fails over under a live three-node cluster: nothing acknowledged is lost.

A private primary with a synchronous standby (confirmed ``sync`` in pg_stat_replication)
and three `chatnode serve` processes that reach it through a multi-host DSN
(``target_session_attrs=read-write``). Devices on every node send under load, in 1-1
chats and a group spanning the nodes, retrying unanswered or refused sends with the same
client_msg_id. Each round SIGKILLs the primary's postmaster at a random moment (after a
random number of acknowledged sends), waits as a failover manager would, promotes the
standby and clears ``synchronous_standby_names`` on it so that it commits alone, as
Patroni does when it promotes (synchronous_mode, not strict).
The rounds (`PLANS`): a quick promotion, a slow one, and a node SIGKILLed together with the
primary, which the other nodes declare failed before the promotion (as they would while
Patroni waits out its ttl): their chats change owners while there is no database. That node
stays down for the rest of the round and is started again before the next one.

After each round the promoted database itself is read: every acknowledged message is
stored exactly once at its acknowledged seq (an ack whose message is not there is a false
ack, counted as lost), each chat's seqs are 1..last_seq without a gap, every device
received every message of its chats once and in order, and the only error any send got
was ``unavailable``. Between rounds a new standby is cloned from the new primary on the
old one's port, so the nodes' DSN names the pair again.

The counts and timings of every round go to test-artifacts/cluster_pg_failover.json;
``CHATNODE_PG_FAILOVER_ROUNDS`` sets the number of rounds (the plans repeat),
``CHATNODE_PG_FAILOVER_SEED`` the random moments.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import trio
from harness import ARTIFACTS, Chat, Device, NodeProcess, check, until_acked
from pgserver import PgServer

from node.client import ChatClient, ClientError
from node.testing import PASSWORD, wait_until, wait_until_sync

pytestmark = pytest.mark.engine("postgresql")

ROUNDS = int(os.environ.get("CHATNODE_PG_FAILOVER_ROUNDS", "3"))
RECOVERY_TIMEOUT = 60.0  # seconds every sender may take to be acknowledged again after a kill


class Plan(NamedTuple):
    name: str
    gap: tuple[float, float]  # seconds from the primary's death to the promotion (drawn at random)
    kill_node: bool  # a chatnode process dies with the primary


PLANS = [
    Plan("primary killed, quick promotion", (0.3, 1.0), False),
    Plan("primary killed, slow promotion", (2.5, 3.5), False),
    Plan("primary and a node killed", (0.5, 1.5), True),
]


class Database:
    """A primary and its synchronous standby, kept the way Patroni keeps them."""

    def __init__(self) -> None:
        self.primary = PgServer().start()
        self.dbname = self.primary.create_database().rsplit("dbname=", 1)[1]
        self.ports = (self.primary.port, 0)  # the DSN's two hosts, fixed for the whole test
        self.standby: PgServer | None = None
        self.standbys = 0
        self.add_standby()
        assert self.standby is not None
        self.ports = (self.primary.port, self.standby.port)

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
        wait_until_sync(lambda: self.primary.execute("SELECT sync_state, state FROM pg_stat_replication "
                                                     f"WHERE application_name = '{name}'") == [("sync", "streaming")],
                        60, interval=0.05)

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

    def log(self) -> dict[int, list[tuple[int, str | None]]]:
        """Every chat's stored (seq, client_msg_id), in seq order, read from the primary."""
        out: dict[int, list[tuple[int, str | None]]] = {}
        for chat_id, seq, cmid in self.primary.execute(
                "SELECT chat_id, seq, record->>'client_msg_id' FROM messages ORDER BY chat_id, seq", self.dbname):
            out.setdefault(chat_id, []).append((seq, cmid))
        return out

    def last_seqs(self) -> dict[int, int]:
        return dict(self.primary.execute("SELECT id, last_seq FROM chats", self.dbname))  # type: ignore[arg-type]

    def destroy(self) -> None:
        for server in (self.primary, self.standby):
            if server is not None:
                server.destroy()


class Sender:
    """Sends one message after another into a chat, each retried with the same
    client_msg_id until it is acknowledged, as a real client does; only `unavailable`
    is retryable, any other error fails the test."""

    def __init__(self, device: Device, chat_id: str, tag: str) -> None:
        self.device = device
        self.chat_id = chat_id
        self.tag = tag
        self.sent = 0
        self.acks: list[tuple[float, float]] = []  # (when the acknowledged attempt was sent, when its ack came)
        self.refusals: list[tuple[float, float]] = []  # the same for `unavailable` answers
        self.duplicate_acks = 0  # retries answered from the idempotency record

    def _answered(self, sent: float, error: ClientError | None) -> None:
        (self.acks if error is None else self.refusals).append((sent, trio.current_time()))

    async def run(self, stop: trio.Event) -> None:
        while not stop.is_set():
            cmid = f"{self.tag}-{self.sent}"
            with trio.fail_after(30):
                ack = await self.device.conn.send_until_acked(self.chat_id, cmid, client_msg_id=cmid,
                                                              on_answer=self._answered, max_backoff=0.05)
            self.duplicate_acks += bool(ack.get("duplicate"))
            self.device.acked[cmid] = (self.chat_id, ack["seq"])
            self.sent += 1

    def first_ack_sent_after(self, moment: float) -> float | None:
        """When the first ack came for an attempt sent after `moment`."""
        return next((acked for sent, acked in self.acks if sent >= moment), None)


async def storage_stats(nodes: list[NodeProcess]) -> dict[int, dict[str, int]]:
    """Each node's PostgreSQL counters, and the subscription work it had to put off for
    storage (since its start)."""
    out = {}
    async with httpx.AsyncClient() as http:
        for node in nodes:
            stats = (await http.get(f"{node.url}/api/admin/stats", timeout=10)).json()
            out[node.node_id] = {key: stats["storage"][key] for key in ("unknown_outcomes", "commit_timeouts",
                                                                          "reconnects")}
            out[node.node_id]["deferred_for_storage"] = stats["routing"]["deferred_for_storage"]
    return out


def stats_delta(before: dict[int, dict[str, int]], after: dict[int, dict[str, int]]) -> dict[str, int]:
    """The counters' growth over the round, summed over the nodes alive at its end."""
    total: Counter[str] = Counter()
    for node_id, counters in after.items():
        for key, value in counters.items():
            total[key] += value - before[node_id][key]
    return dict(total)


async def until_members(nodes: list[NodeProcess], count: int, timeout: float = 30.0) -> None:
    """Until each of `nodes` lists `count` live members (its /api/info)."""
    async with httpx.AsyncClient() as http:

        async def listed() -> bool:
            for node in nodes:
                if len((await http.get(f"{node.url}/api/info", timeout=5)).json()["nodes"]) != count:
                    return False
            return True

        await wait_until(listed, timeout, interval=0.05)


async def test_postgres_fails_over_under_load_and_loses_nothing(tmp_path: Path) -> None:
    db = await trio.to_thread.run_sync(Database)
    storage = f'[storage]\nengine = "postgresql"\ndsn = "{db.dsn()}"\n'
    first = NodeProcess(tmp_path, 1, [], storage)
    nodes = [first] + [NodeProcess(tmp_path, i, [first.cluster_address], storage) for i in (2, 3)]
    rng = random.Random(int(os.environ.get("CHATNODE_PG_FAILOVER_SEED", "11")))
    rounds: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        with trio.fail_after(60 + 60 * ROUNDS):
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
                    if round_:
                        await trio.to_thread.run_sync(db.add_standby)
                    rounds.append(await one_round(db, nodes, devices, chats, urls, rng, round_))
                nursery.cancel_scope.cancel()
    finally:
        for node in nodes:
            await node.stop()
        await trio.to_thread.run_sync(db.destroy)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "cluster_pg_failover.json").write_text(json.dumps(
        {"wall_seconds": round(time.monotonic() - started, 1), "rounds": rounds}, indent=2))
    for entry in rounds:
        assert entry["acked"] > 0 and entry["acked_after_kill"] > 0, entry
        assert entry["lost"] == 0 and entry["duplicated"] == 0, entry  # no false ack, nothing stored twice
        assert entry["acked_without_primary"] == 0, entry
        assert entry["seq_gaps"] == 0 and entry["stored"] == entry["acked"], entry
        assert entry["undelivered"] == 0 and entry["out_of_order"] == 0, entry
    assert sum(r["unavailable"] for r in rounds) > 0, rounds  # sends did meet the gap, and were refused


async def one_round(db: Database, nodes: list[NodeProcess], devices: list[Device], chats: list[Chat],
                    urls: list[str], rng: random.Random, round_: int) -> dict[str, Any]:
    """Load; the primary dies at a random moment (with a node, in some rounds) and the
    standby is promoted after a while; the load runs on until every sender is
    acknowledged again. Then the counts of the round."""
    plan = PLANS[round_ % len(PLANS)]
    prefix = f"r{round_}-"
    senders = [Sender(device, chat_id, f"{prefix}c{c}-{d}")
               for c, (members, chat_id) in enumerate(chats) for d, device in enumerate(members)]
    for node in nodes:
        if node.proc is not None and node.proc.poll() is not None:
            await node.start()  # killed in the round before
    before = await storage_stats(nodes)
    victim = nodes[rng.randrange(3)] if plan.kill_node else None
    alive = [n for n in nodes if n is not victim]
    stop = trio.Event()
    async with trio.open_nursery() as load:
        for sender in senders:
            load.start_soon(sender.run, stop)
        await until_acked(devices, rng.randint(20, 80))  # load runs for a random number of acks, then ...
        killed_port = db.primary.port
        killing = trio.current_time()
        if victim is not None:
            victim.kill()
        await trio.to_thread.run_sync(db.kill_primary)  # ... the primary dies mid-flight
        if victim is not None:
            await victim.wait()
        killed = trio.current_time()  # the primary and all its processes are gone
        if victim is not None:  # ownership moves while there is no database
            await until_members(alive, 2)
        await trio.sleep(rng.uniform(*plan.gap))  # the time a failover manager takes to decide: time is the subject
        promoting = trio.current_time()
        await trio.to_thread.run_sync(db.promote)
        promoted = trio.current_time()
        await wait_until(lambda: all(s.first_ack_sent_after(promoting) for s in senders), RECOVERY_TIMEOUT)
        await until_acked(devices, 20)  # and on a little
        stop.set()
    after = await storage_stats(alive)
    report = await check(devices, chats, urls)  # waits for delivery to settle
    recovered = [s.first_ack_sent_after(killed) or 0.0 for s in senders]
    gap = [(sent, answered) for s in senders for sent, answered in s.refusals + s.acks if answered >= killing]
    return {
        "round": round_ + 1, "plan": plan.name, "killed_node": victim.node_id if victim else None,
        "killed_port": killed_port, "promoted_port": db.primary.port,
        "acked": sum(len(s.acks) for s in senders),
        "acked_after_kill": sum(1 for s in senders for sent, _ in s.acks if sent >= killing),
        # sent once the primary was gone, acknowledged before there was a new one: false by construction
        "acked_without_primary": sum(1 for s in senders for sent, acked in s.acks if killed <= sent and acked < promoting),
        "duplicate_acks": sum(s.duplicate_acks for s in senders),
        "unavailable": sum(len(s.refusals) for s in senders),
        "kill_seconds": round(killed - killing, 3), "promote_after_kill": round(promoting - killed, 3),
        "promotion_seconds": round(promoted - promoting, 3),
        # for sends made once the primary was gone: the first acknowledged, and every sender's
        "first_ack_after_kill": round(min(recovered) - killed, 3),
        "all_acked_after_kill": round(max(recovered) - killed, 3),
        "all_acked_after_promotion_began": round(max(recovered) - promoting, 3),
        "longest_answer_seconds": round(max(answered - sent for sent, answered in gap), 3),
        **stats_delta(before, after),
        **await trio.to_thread.run_sync(audit, db, chats, devices, prefix),
        "out_of_order": report["out_of_order"], "undelivered_all_rounds": report["undelivered"],
        "lost_all_rounds": report["lost"],
    }


def audit(db: Database, chats: list[Chat], devices: list[Device], prefix: str) -> dict[str, int]:
    """The round's messages as the promoted database holds them, against what was
    acknowledged and what the devices received."""
    log, last_seqs = db.log(), db.last_seqs()
    gaps = sum(1 for chat_id, entries in log.items()
               if [seq for seq, _ in entries] != list(range(1, last_seqs[chat_id] + 1)))
    stored = Counter(cmid for entries in log.values() for _, cmid in entries if cmid and cmid.startswith(prefix))
    where = {cmid: (str(chat_id), seq) for chat_id, entries in log.items() for seq, cmid in entries if cmid}
    acked = {cmid: place for d in devices for cmid, place in d.acked.items() if cmid.startswith(prefix)}
    lost = sum(1 for cmid, place in acked.items() if where.get(cmid) != place)  # absent, or at another seq
    delivered = undelivered = duplicate_deliveries = 0
    for members, chat_id in chats:
        seqs = {seq for seq, cmid in log.get(int(chat_id), []) if cmid and cmid.startswith(prefix)}
        for device in members:
            own = {seq for chat, seq in device.acked.values() if chat == chat_id}
            got = Counter(seq for seq in device.received.get(chat_id, []) if seq in seqs)
            delivered += sum(got.values())
            duplicate_deliveries += sum(n - 1 for n in got.values())
            undelivered += len(seqs - own - set(got))
    return {"stored": sum(stored.values()), "delivered": delivered, "lost": lost,
            "duplicated": sum(n - 1 for n in stored.values()) + duplicate_deliveries,
            "undelivered": undelivered, "seq_gaps": gaps}
