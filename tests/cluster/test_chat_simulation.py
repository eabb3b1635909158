"""The chat cluster simulation (node/cluster/chatsim, docs/cluster-simulation.md).

Real nodes (sequencer, cluster routing, links, membership, sessions) over the in-memory
network, with PostgreSQL's constraints in an in-memory database, in simulated time:
random sends and faults over many seeds must keep every invariant of the checker; a
seed replays exactly; and the checker does catch a database without the seq fences.
"""

from __future__ import annotations

import pytest

from node.cluster.chatsim.run import simulate, summarize

pytestmark = pytest.mark.engine("lmdb")  # simulated storage: run once, not once per engine

QUICK_SEEDS = range(1, 13)
QUICK_STEPS = 150


def test_random_sends_and_faults_keep_every_invariant_over_many_seeds():
    results = [simulate(seed, QUICK_STEPS) for seed in QUICK_SEEDS]
    failed = {r.seed: r.violations[:5] for r in results if r.violations}
    assert not failed, failed
    total = summarize(results)
    assert total["acked"] == total["sends"]  # after healing, every send was acknowledged
    # the faults did happen, and the database did refuse second writers
    for name in ("crashes", "stops", "partitions", "pauses", "cuts", "drops", "conflicts", "unknown_outcomes"):
        assert total[name] > 0, (name, total)


def test_a_seed_replays_exactly():
    first = simulate(7, 80, keep_trace=True)
    again = simulate(7, 80, keep_trace=True)
    assert first.trace == again.trace
    assert first.trace_hash == again.trace_hash
    assert first.counts == again.counts
    assert simulate(8, 80).trace_hash != first.trace_hash


#: steps that split the cluster often and heal it rarely
SPLITS = {"send": 50.0, "partition": 6.0, "heal": 1.0, "crash": 0.5, "restart": 1.0}


def test_the_checker_catches_a_database_without_the_seq_fences():
    """Without the primary key on (chat, seq) and the compare-and-set of a chat's seq,
    two owners on either side of a partition each store their own message under one seq
    and acknowledge it; the checker must say so. The same seeds with the fences in place
    keep every invariant."""
    broken = [simulate(seed, 200, fences=False, actions=SPLITS) for seed in range(1, 5)]
    found = [v for r in broken for v in r.violations if "two different messages acknowledged with one seq" in v]
    assert found, [r.violations[:3] for r in broken]
    fenced = [simulate(seed, 200, actions=SPLITS) for seed in range(1, 5)]
    assert all(not r.violations for r in fenced), [r.violations[:3] for r in fenced]
    assert sum(r.counts["conflicts"] for r in fenced) > 0
