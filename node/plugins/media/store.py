"""The content-addressed file store under `<data dir>/media/`.

    media/content/ab/<sha256>     the bytes, named by their SHA-256 (stored once)
    media/thumbs/ab/<sha256>.jpg  the thumbnail of an image
    media/tmp/                    uploads in progress; emptied at start-up

A file enters the store by `os.replace` from tmp/ after it was written and fsynced, so
a reader never sees a half-written file under a content name. Uploads are other users'
private photos and files: folders are created 0700 and files 0600, whatever the umask. Every filesystem call
runs in a worker thread; writes are batched (`UploadSink`) so a large upload costs one
thread hop per `WRITE_BATCH` bytes, not one per network chunk.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import trio

WRITE_BATCH = 1024 * 1024  # bytes gathered before one write+hash in a worker thread
READ_CHUNK = 256 * 1024  # bytes per read when serving a file
ORPHAN_AGE = 3600.0  # seconds: a content file without a record this old is an orphan


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.content_dir = root / "content"
        self.thumb_dir = root / "thumbs"
        self.tmp_dir = root / "tmp"

    def prepare(self) -> None:
        """Create the folders (the store's root made 0700 even if an older version left it
        open: what is inside is then unreachable for others) and drop leftovers of uploads
        cut short by a crash. Sync."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        for folder in (self.content_dir, self.thumb_dir, self.tmp_dir):
            folder.mkdir(mode=0o700, exist_ok=True)
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)

    def content_path(self, sha: str) -> Path:
        return self.content_dir / sha[:2] / sha

    def thumb_path(self, sha: str) -> Path:
        return self.thumb_dir / sha[:2] / f"{sha}.jpg"

    def temp_path(self) -> Path:
        return self.tmp_dir / f"{secrets.token_hex(12)}.part"

    def temp_files(self) -> list[Path]:
        return sorted(self.tmp_dir.iterdir())

    # -- sync helpers (run in worker threads) -----------------------------------------

    def install(self, sha: str, tmp: Path, thumb: bytes | None) -> None:
        """Move an upload into place under its content name, with its thumbnail."""
        if thumb is not None:
            path = self.thumb_path(sha)
            path.parent.mkdir(mode=0o700, exist_ok=True)
            part = self.temp_path()
            _write_synced(part, thumb)
            os.replace(part, path)
        target = self.content_path(sha)
        target.parent.mkdir(mode=0o700, exist_ok=True)
        os.replace(tmp, target)

    def remove(self, sha: str) -> None:
        self.content_path(sha).unlink(missing_ok=True)
        self.thumb_path(sha).unlink(missing_ok=True)

    def orphans(self, known: set[str]) -> list[str]:
        """Content files older than ORPHAN_AGE that no record names (crash leftovers)."""
        cutoff = time.time() - ORPHAN_AGE
        out = []
        for folder in self.content_dir.iterdir():
            for path in folder.iterdir():
                if path.name not in known and path.stat().st_mtime < cutoff:
                    out.append(path.name)
        return out

    def usage(self) -> dict[str, int]:
        """Bytes and files in the content store (for the admin and the tests)."""
        files = size = 0
        for folder in self.content_dir.iterdir():
            for path in folder.iterdir():
                files += 1
                size += path.stat().st_size
        return {"files": files, "bytes": size}


def create_private(path: Path | str) -> BinaryIO:
    """A new file (never an existing one) that only the node's user can read: 0600."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


def _write_synced(path: Path, data: bytes) -> None:
    with create_private(path) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


async def remove_quietly(*paths: Path) -> None:
    """Delete temp files, even while the caller is being cancelled (client went away)."""
    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(_unlink_all, paths)


def _unlink_all(paths: tuple[Path, ...]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


class UploadSink:
    """Writes an upload to a temp file as it arrives, hashing it on the way.

    Backpressure: `write` returns once the batch it completed is on disk, so the caller
    reads no faster than the disk takes it. Memory: at most WRITE_BATCH bytes buffered.
    Cancellation: a write in a worker thread finishes before the cancel is delivered;
    the caller removes the file with `remove_quietly`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._buffer = bytearray()
        self._hash = hashlib.sha256()
        self._file: BinaryIO | None = None

    async def open(self) -> None:
        self._file = await trio.to_thread.run_sync(create_private, self.path)

    async def write(self, data: bytes) -> None:
        self._buffer += data
        self.size += len(data)
        if len(self._buffer) >= WRITE_BATCH:
            await self._flush()

    async def _flush(self) -> None:
        batch, self._buffer = self._buffer, bytearray()
        if batch:
            await trio.to_thread.run_sync(self._write, batch)

    def _write(self, batch: bytearray) -> None:
        assert self._file is not None
        self._file.write(batch)
        self._hash.update(batch)

    async def finish(self) -> str:
        """Flush, fsync and close; returns the SHA-256 of everything written."""
        await self._flush()
        await trio.to_thread.run_sync(self._sync_and_close)
        return self._hash.hexdigest()

    def _sync_and_close(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    async def aclose(self) -> None:
        if self._file is not None and not self._file.closed:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._file.close)


async def stream_file(path: Path, first: int, last: int) -> AsyncIterator[bytes]:
    """Yield bytes first..last (inclusive) of a file in READ_CHUNK pieces, off the loop."""
    f = await trio.open_file(path, "rb")
    async with f:
        await f.seek(first)
        remaining = last - first + 1
        while remaining > 0:
            data = await f.read(min(READ_CHUNK, remaining))
            if not data:
                return
            remaining -= len(data)
            yield data


__all__ = ["ContentStore", "UploadSink", "remove_quietly", "stream_file"]
