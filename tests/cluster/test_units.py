"""The pure parts of membership: wire form, keyring, broadcast queue, merge rules, config."""

from __future__ import annotations

import base64
import random

import attrs
import pytest

from node.cluster.awareness import Awareness
from node.cluster.broadcast import BroadcastQueue
from node.cluster.config import ClusterConfig
from node.cluster.keyring import PURPOSE_DATAGRAM, PURPOSE_STREAM, Keyring, OpenError
from node.cluster.messages import (
    MAX_INCARNATION,
    Ack,
    Alive,
    Dead,
    DecodeError,
    IndirectPing,
    MemberState,
    Nack,
    Ping,
    PushPull,
    Refuse,
    Suspect,
    decode,
    encode,
)
from node.cluster.state import (
    FAILED,
    JOINED,
    LEFT_KIND,
    MAX_INCARNATION_JUMP,
    RECOVERED,
    SUSPECTED,
    Change,
    Member,
    MemberTable,
    Suspicion,
)
from node.config import ConfigError, structure_config

pytestmark = pytest.mark.engine("lmdb")  # membership units: no storage

ALL_MESSAGES = [
    Ping(1, 2, "127.0.0.1:7946"),
    IndirectPing(2**40, 1023, "127.0.0.1:1", "[::1]:2", True),
    Ack(0),
    Nack(7),
    Alive(5, 3, "n5", "127.0.0.1:7950", "http://127.0.0.1:8085", 1),
    Suspect(5, 3, 1),
    Dead(5, 3, 5),
    PushPull(
        True,
        4,
        (MemberState(4, 0, "alive", "n4", "127.0.0.1:1", "", 1), MemberState(9, 2, "left", "n9", "h:2", "u", 1)),
    ),
    Refuse("node_id_taken", "node id 4 is already used"),
]


def test_every_message_round_trips():
    assert decode(encode(ALL_MESSAGES)) == ALL_MESSAGES
    for msg in ALL_MESSAGES:
        assert decode(encode([msg])) == [msg]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x90",  # an empty array
        b"\x91\x90",  # [[]]
        b"\x91\x92\x63\x01",  # unknown tag 99
        b"\x91\x93\x03\x01\x02",  # Ack with an extra field
        b"\x91\x92\x03\xa1x",  # Ack with a string seq
        b"\x91\x94\x06\xcd\x04\x00\x00\x00",  # Suspect of node 1024
        b"\x91\x92\x03\xc3",  # Ack(True): a bool is not an int
        b"\xc1",  # never-used msgpack byte
        b"\x81\xa1a\x01",  # a map
    ],
)
def test_malformed_bodies_raise_decode_error(body):
    with pytest.raises(DecodeError):
        decode(body)


def test_random_garbage_never_raises_anything_but_decode_error():
    rng = random.Random(1)
    good = encode(ALL_MESSAGES)
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            decode(bytes(data[: rng.randint(0, len(data))]))
        except DecodeError:
            pass


def test_keyring_seals_opens_and_rotates():
    old, new = bytes(range(32)), bytes(range(1, 33))
    sealed = Keyring([old]).seal(b"hello", PURPOSE_DATAGRAM)
    assert Keyring([new, old]).open(sealed, PURPOSE_DATAGRAM) == b"hello"  # every key decrypts
    with pytest.raises(OpenError):
        Keyring([new]).open(sealed, PURPOSE_DATAGRAM)
    with pytest.raises(OpenError):  # a datagram is not a stream frame
        Keyring([old]).open(sealed, PURPOSE_STREAM)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(OpenError):
        Keyring([old]).open(tampered, PURPOSE_DATAGRAM)
    with pytest.raises(OpenError):  # keyed and unkeyed nodes never trust each other
        Keyring([old]).open(Keyring([]).seal(b"x", PURPOSE_DATAGRAM), PURPOSE_DATAGRAM)
    with pytest.raises(OpenError):
        Keyring([]).open(sealed, PURPOSE_DATAGRAM)
    assert len(sealed) == len(b"hello") + Keyring([old]).overhead


def test_broadcast_queue_limits_transmits_and_replaces_by_key():
    q = BroadcastQueue(retransmit_mult=2, member_count=lambda: 5)  # limit 2 * ceil(log10(6)) = 2
    q.queue(1, b"a" * 10)
    q.queue(2, b"b" * 10)
    q.queue(1, b"c" * 10)  # replaces the message about member 1
    assert sorted(q.take(0, 100)) == [b"b" * 10, b"c" * 10]
    assert q.take(0, 15) == [b"c" * 10]  # newest first among equals; only one fits
    assert q.take(0, 100) == [b"b" * 10]
    assert q.take(0, 100) == [] and len(q) == 0


def _table() -> MemberTable:
    return MemberTable(Member(1, "n1", "h:1", "", 1, 0, "alive", 0.0))


def test_merge_rules_follow_incarnations():
    t = _table()
    assert t.apply_alive(Alive(2, 0, "n2", "h:2", "", 1), 1.0).kind == JOINED
    assert t.apply_alive(Alive(2, 0, "n2", "h:2", "", 1), 1.0).kind is None  # old news
    assert t.apply_suspect(Suspect(2, 0, 3), 2.0, (4.0, 24.0), 2).kind == SUSPECTED
    assert t.apply_suspect(Suspect(2, 0, 4), 2.5, (4.0, 24.0), 2).rebroadcast  # a confirmation
    assert t.apply_alive(Alive(2, 1, "n2", "h:2", "", 1), 3.0).kind == RECOVERED  # refuted
    assert t.apply_suspect(Suspect(2, 0, 3), 4.0, (4.0, 24.0), 2).kind is None  # stale
    assert t.apply_dead(Dead(2, 1, 3), 5.0).kind == FAILED
    assert t.apply_alive(Alive(2, 1, "n2", "h:2", "", 1), 6.0).kind is None  # dead at 1 beats alive at 1
    assert t.apply_alive(Alive(2, 2, "n2", "h:2", "", 1), 6.0).kind == JOINED  # back, higher incarnation
    assert t.apply_dead(Dead(2, 2, 2), 7.0).kind == LEFT_KIND  # said by itself: a leave


def test_messages_about_ourselves_are_refuted_or_repeated():
    t = _table()
    assert t.apply_suspect(Suspect(1, 0, 2), 1.0, (4.0, 24.0), 2).refute
    t.refute(0)
    assert t.local.incarnation == 1
    assert t.apply_suspect(Suspect(1, 0, 2), 1.0, (4.0, 24.0), 2).reannounce  # stale doubt: say it again
    assert t.apply_dead(Dead(1, 5, 2), 1.0).refute
    assert t.refute(5).incarnation == 6
    assert t.apply_alive(Alive(1, 9, "n1", "h:1", "", 1), 1.0).refute  # a former life of ours


def test_incarnation_jumps_are_bounded_and_refutations_saturate():
    t = _table()
    t.apply_alive(Alive(2, 5, "n2", "h:2", "", 1), 1.0)
    too_far = 5 + MAX_INCARNATION_JUMP + 1
    assert t.apply_suspect(Suspect(2, too_far, 3), 2.0, (4.0, 24.0), 2).kind is None
    assert t.apply_dead(Dead(2, MAX_INCARNATION, 3), 2.0).kind is None
    assert t.apply_dead(Dead(2, MAX_INCARNATION, 2), 2.0).kind is None
    assert t.apply_alive(Alive(2, MAX_INCARNATION, "n2", "h:2", "", 1), 2.0).kind is None
    assert (t.get(2).state, t.get(2).incarnation) == ("alive", 5)
    assert t.apply_suspect(Suspect(2, too_far - 1, 3), 3.0, (4.0, 24.0), 2).kind == SUSPECTED  # at the bound
    # about ourselves: a forged top incarnation is not refuted (there would be nothing above it)
    assert t.apply_suspect(Suspect(1, MAX_INCARNATION, 2), 4.0, (4.0, 24.0), 2) == Change()
    t.local.incarnation = MAX_INCARNATION - 1
    assert t.refute(MAX_INCARNATION).incarnation == MAX_INCARNATION  # never past what the wire allows


def test_a_live_node_id_claimed_from_elsewhere_is_a_conflict():
    t = _table()
    t.apply_alive(Alive(2, 0, "n2", "h:2", "", 1), 1.0)
    change = t.apply_alive(Alive(2, 9, "other", "h:99", "", 1), 2.0)
    assert change.conflict is not None and change.kind is None
    assert t.get(2).address == "h:2"
    t.apply_dead(Dead(2, 0, 3), 3.0)
    assert t.apply_alive(Alive(2, 0, "n2b", "h:99", "", 1), 4.0).kind == JOINED  # a failed id may be reclaimed


def test_suspicion_timeout_shrinks_with_confirmations():
    s = Suspicion(source=1, k=3, low=4.0, high=24.0, started=100.0)
    assert s.deadline == 124.0
    deadlines = []
    for source in (2, 3, 4):
        assert s.confirm(source)
        deadlines.append(s.deadline)
    assert deadlines == sorted(deadlines, reverse=True) and deadlines[-1] == 104.0
    assert not s.confirm(2) and not s.confirm(5)  # repeats and extras do not count
    assert Suspicion(1, 0, 4.0, 24.0, 0.0).deadline == 4.0  # nobody to confirm: the minimum


def test_a_suspicion_read_in_a_state_exchange_never_counts_as_an_accuser():
    """Rows of a state exchange do not say who accused; the sender may only have heard
    it. Counting them would turn one lone accusation into a confirmed one."""
    bounds = (4.0, 24.0)
    t = _table()
    t.apply_alive(Alive(2, 0, "n2", "h:2", "", 1), 0.0)
    assert t.apply_suspect(Suspect(2, 0, 3), 10.0, bounds, 2).kind == SUSPECTED
    for sender in (4, 5, 6):  # three members pass the same suspicion on in state exchanges
        change = t.apply_suspect(Suspect(2, 0, sender), 11.0, bounds, 2, hearsay=True)
        assert change.kind is None and not change.rebroadcast
    assert t.get(2).suspicion.confirmations == 0 and t.get(2).suspicion.deadline == 34.0
    assert t.apply_suspect(Suspect(2, 0, 4), 12.0, bounds, 2).rebroadcast  # member 4 itself accuses: it counts
    assert t.get(2).suspicion.confirmations == 1

    # first heard of second-hand: a suspicion without an accuser, not passed on
    t = _table()
    t.apply_alive(Alive(2, 0, "n2", "h:2", "", 1), 0.0)
    change = t.apply_suspect(Suspect(2, 0, 4), 10.0, bounds, 2, hearsay=True)
    assert change.kind == SUSPECTED and not change.rebroadcast
    assert t.get(2).suspicion.deadline == 34.0
    assert t.apply_suspect(Suspect(2, 0, 3), 11.0, bounds, 2).rebroadcast  # the accuser: passed on ...
    assert t.get(2).suspicion.confirmations == 0  # ... but it is the first, not a confirmation
    assert t.apply_suspect(Suspect(2, 0, 5), 12.0, bounds, 2).rebroadcast
    assert t.get(2).suspicion.confirmations == 1


async def test_merged_state_opens_a_suspicion_but_confirms_none():
    from node.cluster.membership import Membership
    from node.cluster.memnet import MemoryNetwork, StallableClock

    network = MemoryNetwork()
    transport = network.attach("sim-1:7946")
    m = Membership(
        ClusterConfig(enabled=True), node_id=1, name="n1", http_url="", transport=transport,
        clock=StallableClock(transport.stall), keyring=Keyring([]),
    )  # fmt: skip
    for node in range(2, 8):
        m._apply_alive(Alive(node, 0, f"n{node}", f"sim-{node}:7946", "", 1))
    m._apply_suspect(Suspect(2, 0, 3))  # member 3 accuses member 2
    suspicion = m.table.get(2).suspicion
    deadline = suspicion.deadline
    queued = m.broadcasts.enqueued
    row = MemberState(2, 0, "suspect", "n2", "sim-2:7946", "", 1)
    m._merge([row], sender=4)
    m._merge([attrs.evolve(row, state="dead")], sender=5)
    assert suspicion.confirmations == 0 and suspicion.deadline == deadline
    assert m.broadcasts.enqueued == queued  # nothing passed on in the senders' names
    m._merge([attrs.evolve(row, node=6, name="n6", address="sim-6:7946")], sender=4)
    assert m.member(6).state == "suspect"  # news to us: a suspicion (it is probed next) ...
    assert m.broadcasts.enqueued == queued  # ... still not passed on


def test_awareness_scales_and_saturates():
    a = Awareness(max_multiplier=8)
    a.apply_delta(3)
    assert a.scale(1.0) == 4.0
    a.apply_delta(100)
    assert a.score == 7 and a.scale(0.5) == 4.0
    a.apply_delta(-100)
    assert a.score == 0 and a.peak == 7


def test_config_defaults_are_memberlist_lan():
    c = ClusterConfig()
    assert (c.probe_interval, c.probe_timeout, c.indirect_checks, c.suspicion_mult) == (1.0, 0.5, 3, 4)
    assert (c.gossip_interval, c.gossip_nodes, c.push_pull_interval, c.retransmit_mult) == (0.2, 3, 30.0, 4)
    assert c.max_packet_bytes == 1400 and not c.enabled


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"bind_host": "10.0.0.1"},
            "cluster.bind_host: binding a cluster to a non-loopback address needs [cluster] keys",
        ),
        ({"keys": ["not base64!"]}, "cluster.keys: each key must be base64"),
        ({"keys": [base64.b64encode(b"short").decode()]}, "cluster.keys: a key must decode to 16, 24 or 32 bytes"),
        ({"seeds": ["localhost"]}, "cluster.seeds: 'localhost' is not host:port"),
        ({"probe_timeout": 1.5}, "cluster.probe_timeout: must be shorter than probe_interval"),
        ({"gossip_nodes": 0}, "cluster.gossip_nodes: must be between 1 and 64"),
        ({"fanout": 3}, "unknown key(s) in [cluster]: fanout"),
    ],
)
def test_bad_cluster_settings_stop_start_up_naming_the_key(section, message):
    with pytest.raises(ConfigError) as info:
        structure_config({"cluster": section})
    assert str(info.value).startswith(message)


def test_a_keyed_cluster_may_bind_anywhere():
    key = base64.b64encode(bytes(32)).decode()
    config = structure_config({"cluster": {"bind_host": "0.0.0.0", "advertise_host": "192.0.2.7", "keys": [key]}})
    assert config.cluster.raw_keys == [bytes(32)]
