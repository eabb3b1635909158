"""Free loopback ports for the nodes and servers that tests start.

A port found free is bound only once its server starts, so the kernel may offer it again
meanwhile, to the next `free_port()` of the same config (an HTTP port equal to the chat
socket's) or of another node. So no port is handed out twice in one test process.
"""

from __future__ import annotations

import socket

_handed_out: set[int] = set()


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
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
