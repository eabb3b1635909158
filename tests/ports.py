"""Free loopback ports for the nodes and servers that tests start.

A port found free is bound only once its server starts, and nothing else may take it in
between. So the ports handed out lie below the kernel's range of ephemeral ports
(`ip_local_port_range`), which it gives to `bind(0)` and to the source of every outgoing
connection: no client's connection and no other program's `bind(0)` can take one
meanwhile. They also lie above the ports browsers refuse to connect to. Each pytest-xdist
worker hands out a block of its own, so two workers never pick the same port; within a
process none is handed out twice (until its block has gone round once), not even to two
servers of one config.
"""

from __future__ import annotations

import os
import socket

# Below: ports that well-known services may listen on, and the last one browsers refuse to
# connect to (10080, on Chromium's list of unsafe ports).
LOWEST = 11_000


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _block() -> range:
    """This process's ports: its share of those between LOWEST and the ephemeral range."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    size = (_ephemeral_start() - LOWEST) // max(workers, 1)
    return range(LOWEST + index * size, LOWEST + (index + 1) * size)


_BLOCK = _block()
_handed_out: set[int] = set()
_next = 0


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    global _next
    if len(_BLOCK) < 100:  # an ephemeral range that starts low: take what the kernel offers
        return _kernel_port(kind, host)
    for _ in range(2 * len(_BLOCK)):
        port = _BLOCK[_next % len(_BLOCK)]
        _next += 1
        if _next % len(_BLOCK) == 0:
            _handed_out.clear()  # round again: the servers of those ports have long ended
        if port in _handed_out:
            continue
        try:
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind((host, port))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {_BLOCK}")


def _kernel_port(kind: int, host: str) -> int:
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def free_cluster_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP (gossip uses the same number for each)."""
    while True:
        port = free_port(socket.SOCK_STREAM, host)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((host, port))
        except OSError:
            continue
        return port
