"""`make cluster` (tools/local_cluster.py) starts three nodes with their PostgreSQL and
object store, and they serve as one: the docs' walkthrough (docs/cluster.md) rests on it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pgserver
import pytest

pytestmark = pytest.mark.engine("postgresql")  # the tool's own nodes run on PostgreSQL

TOOL = Path(__file__).resolve().parents[2] / "tools" / "local_cluster.py"


@pytest.mark.skipif(not pgserver.available(), reason="PostgreSQL 15 is not installed")
def test_the_local_cluster_starts_serves_across_nodes_and_stops(tmp_path):
    done = subprocess.run([sys.executable, str(TOOL), "--dir", str(tmp_path / "cluster"), "--check", "--free-ports"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 nodes" in done.stdout
    assert "check: alice on" in done.stdout and "'hello across nodes'" in done.stdout
    for i in (1, 2, 3):
        assert (tmp_path / "cluster" / f"n{i}.toml").is_file()
    # everything it started has stopped: PostgreSQL's pid file is gone with its server
    pg_dir = Path(done.stdout.split("(data in ", 1)[1].split(")", 1)[0])
    assert (pg_dir / "data" / "PG_VERSION").is_file() and not (pg_dir / "data" / "postmaster.pid").exists()
    if pg_dir.parent == Path("/var/tmp"):  # (as root under a folder postgres cannot reach)
        subprocess.run(["rm", "-rf", str(pg_dir)], check=True)


def test_a_cluster_port_in_use_is_named_before_anything_starts(tmp_path):
    """A node's cluster port taken (another set-up, say): the tool says which, and starts
    nothing (its folder gets no config)."""
    import socket

    with socket.socket() as taken:
        try:
            taken.bind(("127.0.0.1", 7946))  # node 1's cluster port
        except OSError:
            pytest.skip("port 7946 is in use on this machine")
        taken.listen()
        done = subprocess.run([sys.executable, str(TOOL), "--dir", str(tmp_path / "cluster")],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "7946" in done.stderr, done.stdout + done.stderr
    assert not (tmp_path / "cluster" / "n1.toml").exists()
