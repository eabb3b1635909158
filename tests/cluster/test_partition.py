"""A partition between real node processes, and a paused node, never give one seq to two
messages and lose nothing that was acked (the scenario: tests/cluster/partition_run.py).

It runs in a network namespace of its own (``unshare --net``, so root), where routing
rules cut one node's cluster traffic without touching the machine's network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

pytestmark = pytest.mark.engine("postgresql")

HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE.parent.parent / "test-artifacts"


def namespaces_available() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    probe = subprocess.run(["unshare", "--net", "ip", "rule", "show"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not namespaces_available(), reason="needs root, unshare and ip (iproute2) for a private network")
async def test_a_partition_and_a_pause_never_give_one_seq_to_two_messages(tmp_path):
    out = tmp_path / "report.json"
    with trio.fail_after(420):
        done = await trio.run_process(["unshare", "--net", sys.executable, str(HERE / "partition_run.py"), str(out)],
                                      check=False, capture_stdout=True, capture_stderr=True)
    assert done.returncode == 0, done.stderr.decode()[-6000:]
    report = json.loads(out.read_text())
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "cluster_partition.json").write_text(json.dumps(report, indent=2))
    assert all(phase["acked"] > 0 for phase in report["phases"]), report  # both sides kept serving
    assert report["lost"] == 0 and report["duplicated_in_log"] == 0, report  # and no seq was given twice
    assert report["duplicate_deliveries"] == 0 and report["out_of_order"] == 0, report
    assert report["undelivered"] == 0, report  # every device converged after healing
