"""Where media bytes live: the content store interface and the local directory store.

A content store keeps each distinct content once, named by its SHA-256, plus the JPEG
thumbnail of an image. The media service, the routes and the collector talk to it
through `ContentStore` only; two implementations exist:

- `LocalStore` (`store = "local"`, the default): a directory under the data dir,

      media/content/ab/<sha256>     the bytes
      media/thumbs/ab/<sha256>.jpg  the thumbnail of an image
      media/tmp/                    uploads in progress; emptied at start-up

- `S3Store` (`store = "s3"`, s3store.py): an S3-compatible object store, the same layout
  as object keys.

Uploads arrive as a stream whose SHA-256 is known only at its end, so they are first
written to a *staging* place (a temp file here, a temporary object in S3) and then
`install`ed under their content name. `install` is idempotent and leaves the staged copy
in place until `discard`: the service installs again if a collector removed the same
content meanwhile (see service.py, "Collecting in a cluster").

Uploads are other users' private photos and files: local folders are created 0700 and
files 0600, whatever the umask. Every filesystem call runs in a worker thread; writes are
batched (`FileUpload`) so a large upload costs one thread hop per `WRITE_BATCH` bytes,
not one per network chunk.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import trio

WRITE_BATCH = 1024 * 1024  # bytes gathered before one write+hash in a worker thread
READ_CHUNK = 256 * 1024  # bytes per read when serving a file
CONTENT, THUMBNAIL = "content", "thumbnail"  # the two variants of stored content


class MissingContent(Exception):
    """The content (or its thumbnail) is not in the store."""


class StoreUnavailable(Exception):
    """The store did not answer (an object store that is down or too slow)."""


class Staged(Protocol):
    """Bytes written somewhere temporary, waiting to be installed under their content name."""

    size: int


class Upload(Protocol):
    """An upload being written to staging as it arrives (memory bounded per upload)."""

    size: int

    async def open(self) -> None: ...

    async def write(self, data: bytes) -> None: ...

    async def finish(self) -> str:
        """Everything is staged: its SHA-256."""

    def staged(self) -> Staged: ...

    async def abort(self) -> None:
        """Remove whatever was staged (shielded: runs while the caller is cancelled)."""


class ContentStore(Protocol):
    kind: str

    async def prepare(self, node_id: int) -> None:
        """Make the store ready; drop what this node left staged before it stopped."""

    def new_upload(self, node_id: int) -> Upload:
        """Staging for an upload that is not processed locally (not an image)."""

    def reader(self, staged: Staged) -> BinaryIO:
        """A seekable file object over staged bytes, for probing headers (sync; thread)."""

    async def install(self, sha: str, staged: Staged, thumb: bytes | None) -> None:
        """Put the staged bytes (and thumbnail) under their content name; idempotent."""

    async def discard(self, staged: Staged) -> None: ...

    async def remove(self, sha: str) -> None:
        """Delete a content and its thumbnail; deleting what is gone is fine."""

    async def size(self, sha: str, variant: str) -> int:
        """Bytes of a stored variant; MissingContent if absent."""

    async def open_range(self, sha: str, variant: str, first: int, last: int) -> AsyncIterator[bytes]:
        """Bytes first..last (inclusive), in chunks; MissingContent before the first chunk
        if absent, StoreUnavailable if the store fails."""

    async def list_content(self) -> list[tuple[str, float]]:
        """(sha, Unix time last written) of every stored content."""

    async def sweep_staging(self, older_than: float, node_id: int | None = None) -> int:
        """Remove staged uploads older than `older_than` (Unix seconds), or all of
        `node_id`'s; their number."""

    def presign(self, sha: str, variant: str, mime: str, disposition: str) -> str | None:
        """A URL of the store itself that serves the variant for a short time, if the
        store offers it and it is switched on."""

    async def aclose(self) -> None: ...


def content_name(sha: str, variant: str) -> str:
    """The path of a variant inside a store: content/ab/<sha> or thumbs/ab/<sha>.jpg."""
    if variant == THUMBNAIL:
        return f"thumbs/{sha[:2]}/{sha}.jpg"
    return f"content/{sha[:2]}/{sha}"


def is_sha(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


# -- the local directory store -------------------------------------------------------------


class LocalFile:
    """A staged local file (an upload in progress, or an image's re-encode)."""

    def __init__(self, path: Path, size: int = 0) -> None:
        self.path = path
        self.size = size


class LocalStore:
    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.content_dir = root / "content"
        self.thumb_dir = root / "thumbs"
        self.tmp_dir = root / "tmp"

    async def prepare(self, node_id: int) -> None:
        await trio.to_thread.run_sync(prepare_local_root, self.root)

    def temp_path(self) -> Path:
        return self.tmp_dir / f"{secrets.token_hex(12)}.part"

    def new_upload(self, node_id: int) -> FileUpload:
        return FileUpload(self.temp_path())

    def reader(self, staged: Staged) -> BinaryIO:
        assert isinstance(staged, LocalFile)
        return open(staged.path, "rb", buffering=64 * 1024)

    def path(self, sha: str, variant: str) -> Path:
        return self.root / content_name(sha, variant)

    async def install(self, sha: str, staged: Staged, thumb: bytes | None) -> None:
        assert isinstance(staged, LocalFile)
        await trio.to_thread.run_sync(self._install, sha, staged.path, thumb)

    def _install(self, sha: str, source: Path, thumb: bytes | None) -> None:
        """Link the staged file under its content name (the staged name stays until
        `discard`), with its thumbnail; each appears whole or not at all."""
        if thumb is not None:
            part = self.temp_path()
            write_synced(part, thumb)
            _replace_into(part, self.path(sha, THUMBNAIL))
        part = self.temp_path()
        os.link(source, part)
        _replace_into(part, self.path(sha, CONTENT))

    async def discard(self, staged: Staged) -> None:
        assert isinstance(staged, LocalFile)
        await remove_quietly(staged.path)

    async def remove(self, sha: str) -> None:
        await remove_quietly(self.path(sha, CONTENT), self.path(sha, THUMBNAIL))

    async def size(self, sha: str, variant: str) -> int:
        try:
            return (await trio.Path(self.path(sha, variant)).stat()).st_size
        except FileNotFoundError:
            raise MissingContent(sha) from None

    async def open_range(self, sha: str, variant: str, first: int, last: int) -> AsyncIterator[bytes]:
        try:
            f = await trio.open_file(self.path(sha, variant), "rb")
        except FileNotFoundError:
            raise MissingContent(sha) from None
        return _read_range(f, first, last)

    async def list_content(self) -> list[tuple[str, float]]:
        return await trio.to_thread.run_sync(self._list_content)

    def _list_content(self) -> list[tuple[str, float]]:
        out = []
        for folder in self.content_dir.iterdir():
            for path in folder.iterdir():
                if is_sha(path.name):
                    out.append((path.name, path.stat().st_mtime))
        return out

    async def sweep_staging(self, older_than: float, node_id: int | None = None) -> int:
        return await trio.to_thread.run_sync(self._sweep_staging, older_than)

    def _sweep_staging(self, older_than: float) -> int:
        removed = 0
        for path in self.tmp_dir.iterdir():
            if path.stat().st_mtime < older_than:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def presign(self, sha: str, variant: str, mime: str, disposition: str) -> str | None:
        return None

    async def usage(self) -> dict[str, int]:
        files = await self.list_content()
        sizes = [await self.size(sha, CONTENT) for sha, _ in files]
        return {"files": len(files), "bytes": sum(sizes)}

    async def aclose(self) -> None:
        pass


def prepare_local_root(root: Path) -> None:
    """Create the folders (the root made 0700 even if an older version left it open:
    what is inside is then unreachable for others) and drop leftovers of uploads cut
    short by a crash. Sync."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    for name in ("content", "thumbs", "tmp"):
        (root / name).mkdir(mode=0o700, exist_ok=True)
    for leftover in (root / "tmp").iterdir():
        leftover.unlink(missing_ok=True)


def _replace_into(part: Path, target: Path) -> None:
    target.parent.mkdir(mode=0o700, exist_ok=True)
    os.replace(part, target)


def create_private(path: Path | str) -> BinaryIO:
    """A new file (never an existing one) that only the node's user can read: 0600."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


def write_synced(path: Path, data: bytes) -> None:
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


class FileUpload:
    """Writes an upload to a local temp file as it arrives, hashing it on the way.

    Backpressure: `write` returns once the batch it completed is on disk, so the caller
    reads no faster than the disk takes it. Memory: at most WRITE_BATCH bytes buffered.
    Cancellation: a write in a worker thread finishes before the cancel is delivered;
    `abort` removes the file.
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

    def staged(self) -> LocalFile:
        return LocalFile(self.path, self.size)

    async def abort(self) -> None:
        with trio.CancelScope(shield=True):
            if self._file is not None and not self._file.closed:
                await trio.to_thread.run_sync(self._file.close)
            await remove_quietly(self.path)


async def _read_range(f: Any, first: int, last: int) -> AsyncIterator[bytes]:
    """Yield bytes first..last (inclusive) of an open file in READ_CHUNK pieces, off the loop."""
    async with f:
        await f.seek(first)
        remaining = last - first + 1
        while remaining > 0:
            data = await f.read(min(READ_CHUNK, remaining))
            if not data:
                return
            remaining -= len(data)
            yield data


def now_s() -> float:
    return time.time()


__all__ = ["CONTENT", "THUMBNAIL", "ContentStore", "FileUpload", "LocalFile", "LocalStore", "MissingContent",
           "StoreUnavailable", "content_name", "create_private", "remove_quietly", "write_synced"]
