"""Cluster membership figures from the simulation (simulated time; the defaults of config.toml).

    python -m bench.cluster_sim [--trials 10] [--quick]

Prints, and writes to bench/results/cluster_sim.json:

* detection: seconds from a crash until each survivor marks the member failed
  (median and p99 over all observers of all trials), and until the last one does;
* dissemination: gossip rounds (200 ms) until every member knows a newcomer,
  for 10, 50, 100 and 200 members;
* false failures: live members marked failed over ten simulated minutes at 0%, 10%
  and 20% packet loss, with and without one member whose event loop stalls for
  0.5-3 s at random, and the same with Lifeguard's parts turned off;
* local health: how often a CPU-starved member (every datagram handled 1.2 s late)
  accuses the member it probes, with and without local health awareness.

Everything runs under trio's MockClock, so each scenario takes seconds of wall time.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import attrs
import trio
import trio.testing

from node.cluster.config import ClusterConfig
from node.cluster.membership import failure_detection_bound
from node.cluster.simulation import open_simulation

DEFAULTS = ClusterConfig(enabled=True)
# Lifeguard off: no local health scaling and a fixed (minimum) suspicion timeout
NO_LIFEGUARD = attrs.evolve(DEFAULTS, awareness_max_multiplier=1, suspicion_max_timeout_mult=1)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def run(fn, *args):
    return trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))


async def detection_trial(n: int, seed: int) -> tuple[list[float], float]:
    async with open_simulation(DEFAULTS, seed=seed) as sim:
        nodes = await sim.add_cluster(n)
        await trio.sleep(10 + random.Random(seed).random() * 5)
        victim = nodes[random.Random(seed).randrange(1, n)].node_id
        crashed_at = trio.current_time()
        sim.crash(victim)
        await sim.wait_until(
            lambda: sim.all_see(victim, ("failed",)), timeout=failure_detection_bound(DEFAULTS, n) + 30
        )
        seen = sim.first_event_times(victim, "failed", crashed_at)
        per_observer = [t - crashed_at for t in seen.values()]
        return per_observer, max(per_observer)


async def dissemination_trial(n: int, seed: int) -> float:
    async with open_simulation(DEFAULTS, seed=seed) as sim:
        await sim.add_cluster(n)
        await trio.sleep(10)
        newcomer = await sim.add_node(1023, seeds=[0])
        elapsed = await sim.wait_until(lambda: sim.all_see(newcomer.node_id, ("alive",)), timeout=120, step=0.01)
        return elapsed / DEFAULTS.gossip_interval


async def false_failure_trial(config: ClusterConfig, n: int, loss: float, stall: bool, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    async with open_simulation(config, seed=seed, loss=loss) as sim:
        nodes = await sim.add_cluster(n)
        end = trio.current_time() + 600
        if stall:
            slow = nodes[1].node_id
            while trio.current_time() < end:
                pause = rng.uniform(0.5, 3.0)
                sim.stall(slow, pause)
                await trio.sleep(pause + rng.uniform(2.0, 10.0))
        else:
            await trio.sleep(600)
        await trio.sleep(60)
        stats = [node.membership.statistics() for node in nodes]
        return {
            "false_failures": len(sim.false_failures()),
            "suspicions": sum(s["suspicions"] for s in stats),
            "refutations": sum(s["refutations"] for s in stats),
        }


async def lagging_trial(config: ClusterConfig, seed: int) -> dict[str, int]:
    async with open_simulation(config, seed=seed) as sim:
        nodes = await sim.add_cluster(16)
        nodes[1].stall.lag = 1.2
        await trio.sleep(600)
        stats = nodes[1].membership.statistics()
        return {
            "probes": stats["probes"],
            "accusations": stats["probe_failures"],
            "false_failures": len(sim.false_failures()),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="fewer trials and sizes")
    args = parser.parse_args()
    trials = 3 if args.quick else args.trials
    results: dict[str, object] = {}
    started = time.monotonic()

    detection = {}
    for n in (5, 50):
        observers, last = [], []
        for t in range(trials):
            per_observer, worst = run(detection_trial, n, 1000 + t)
            observers += per_observer
            last.append(worst)
        detection[n] = {
            "observer_median_s": round(statistics.median(observers), 2),
            "observer_p99_s": round(percentile(observers, 0.99), 2),
            "all_detected_median_s": round(statistics.median(last), 2),
            "all_detected_max_s": round(max(last), 2),
            "bound_s": round(failure_detection_bound(DEFAULTS, n), 1),
            "trials": trials,
        }
        print(f"detection n={n}: {detection[n]}", flush=True)
    results["detection"] = detection

    dissemination = {}
    for n in (10, 50, 100) if args.quick else (10, 50, 100, 200):
        rounds = [run(dissemination_trial, n, 2000 + t) for t in range(max(3, trials // 2))]
        dissemination[n] = {
            "rounds_median": round(statistics.median(rounds), 1),
            "rounds_max": round(max(rounds), 1),
            "trials": len(rounds),
        }
        print(f"dissemination n={n}: {dissemination[n]}", flush=True)
    results["dissemination"] = dissemination

    false_failures = {}
    for label, config in (("lifeguard", DEFAULTS), ("no_lifeguard", NO_LIFEGUARD)):
        for loss in (0.0, 0.1, 0.2):
            for stall in (False, True):
                key = f"{label} loss={int(loss * 100)}% stall={'yes' if stall else 'no'}"
                runs = [run(false_failure_trial, config, 16, loss, stall, 3000 + t) for t in range(max(2, trials // 3))]
                false_failures[key] = {
                    "false_failures": sum(r["false_failures"] for r in runs),
                    "suspicions": sum(r["suspicions"] for r in runs),
                    "refutations": sum(r["refutations"] for r in runs),
                    "simulated_minutes": 10 * len(runs),
                    "members": 16,
                }
                print(f"false failures {key}: {false_failures[key]}", flush=True)
    results["false_failures"] = false_failures

    lagging = {}
    for label, config in (
        ("lifeguard", DEFAULTS),
        ("no_local_health", attrs.evolve(DEFAULTS, awareness_max_multiplier=1)),
    ):
        lagging[label] = run(lagging_trial, config, 4000)
        print(f"lagging member, {label}: {lagging[label]}", flush=True)
    results["lagging_member"] = lagging
    results["wall_seconds"] = round(time.monotonic() - started, 1)

    out = Path(__file__).parent / "results" / "cluster_sim.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out} in {results['wall_seconds']} s")


if __name__ == "__main__":
    main()
