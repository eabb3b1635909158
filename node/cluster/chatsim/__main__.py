"""Run the chat cluster simulation over many seeds, or replay one.

    python -m node.cluster.chatsim --seeds 1000 --steps 200 --jobs 2 --json test-artifacts/chat_simulation.json
    python -m node.cluster.chatsim --seed 417 --steps 200 --trace     # replay one seed, print its trace

Exits 1 if any seed broke an invariant (each is listed with its seed, to replay).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from .run import RunResult, simulate, summarize


def _one(args: tuple[int, int, bool]) -> RunResult:
    seed, steps, fences = args
    return simulate(seed, steps, fences=fences)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node.cluster.chatsim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run (default 100)")
    parser.add_argument("--first", type=int, default=1, help="the first seed (default 1)")
    parser.add_argument("--seed", type=int, help="run this one seed only")
    parser.add_argument("--steps", type=int, default=200, help="steps per seed (default 200)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once, one process each (default 1)")
    parser.add_argument("--trace", action="store_true", help="print the trace of the run (with --seed)")
    parser.add_argument("--no-fences", action="store_true",
                        help="the broken database without the seq fences (the checker must complain)")
    parser.add_argument("--json", type=Path, help="write the counts and any violations here")
    args = parser.parse_args(argv)
    fences = not args.no_fences
    if args.seed is not None:
        result = simulate(args.seed, args.steps, fences=fences, keep_trace=args.trace)
        if result.trace is not None:
            print("\n".join(result.trace))
        print(json.dumps({"seed": result.seed, "steps": result.steps, "trace_hash": result.trace_hash,
                          "converged": result.converged, "sim_seconds": round(result.sim_seconds, 3),
                          **result.counts, "violations": result.violations}, indent=2))
        return 1 if result.violations else 0
    seeds = range(args.first, args.first + args.seeds)
    started = time.monotonic()
    work = [(seed, args.steps, fences) for seed in seeds]
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            results = _report(pool.map(_one, work))
    else:
        results = _report(map(_one, work))
    summary: dict[str, Any] = {
        "first_seed": args.first, "steps_per_seed": args.steps, "fences": fences, **summarize(results),
        "sim_seconds": round(sum(r.sim_seconds for r in results), 1),
        "wall_seconds": round(time.monotonic() - started, 1),
        "violations": {str(r.seed): r.violations for r in results if r.violations},
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "violations"}, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if summary["violations"] else 0


def _report(results: Iterable[RunResult]) -> list[RunResult]:
    """Print a line per seed as it finishes (and what it broke)."""
    done = []
    for result in results:
        done.append(result)
        mark = "FAIL" if result.violations else "ok"
        print(f"seed {result.seed}: {mark} sends={result.counts['sends']} acked={result.counts['acked']} "
              f"conflicts={result.counts['conflicts']} sim={result.sim_seconds:.0f}s", flush=True)
        for violation in result.violations[:5]:
            print(f"    {violation}", flush=True)
    return done


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # whoever read the output left (`--trace | head`): not a failure to show
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (the exit flushes nothing)
        sys.exit(1)
