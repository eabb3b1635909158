"""The content store on an S3-compatible object store (`store = "s3"`).

Keys (under `s3.prefix`):

    content/ab/<sha256>             the bytes, named by their SHA-256 (stored once)
    thumbs/ab/<sha256>.jpg          the thumbnail of an image
    staging/<node id>/<ms>-<random> an upload in progress (a multipart upload, or a
                                    small object), removed once it is installed

The client is boto3 (botocore signs every request; nothing here signs by hand). It is
synchronous, so every call runs in a worker thread (`trio.to_thread.run_sync`); one
client, thread-safe, is shared by every upload and download of the node.

An upload streams into the staging key: bytes gather into one part of `part_size` (8 MiB
by default), which is sent as a multipart part once full, so an upload holds at most one
part in memory and nothing on disk; an upload that ends before its first part is full is
sent as one plain object. The SHA-256 is computed on the way. Once the stream ended, the
staged object is copied, inside the store, to `content/ab/<sha256>` (`install`) and then
deleted (`discard`). An upload that fails or is abandoned aborts its multipart upload
and deletes its staged object; what a crash leaves is removed when the node starts again
(its own staging prefix) or by the collector (anyone's, after a day).
"""

from __future__ import annotations

import hashlib
import io
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

import trio

from .settings import S3Settings
from .store import (CONTENT, READ_CHUNK, THUMBNAIL, LocalFile, MissingContent, StoreUnavailable, content_name,
                    is_sha, prepare_local_root)

log = logging.getLogger(__name__)

COPY_LIMIT = 5 * 1024**3  # bytes: larger objects are copied in parts
READER_BLOCK = 256 * 1024  # bytes per ranged read when probing a staged object


def make_client(settings: S3Settings, endpoint: str | None = None) -> Any:
    """A boto3 S3 client for `settings` (sync: slow to build, call it in a thread)."""
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=settings.region,
        s3={"addressing_style": settings.addressing},
        connect_timeout=settings.timeout,
        read_timeout=settings.timeout,
        retries={"max_attempts": settings.attempts, "mode": "standard"},
        max_pool_connections=settings.connections,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    credentials = {}
    if settings.access_key or settings.secret_key:
        credentials = {"aws_access_key_id": settings.access_key, "aws_secret_access_key": settings.secret_key}
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=(endpoint if endpoint is not None else settings.endpoint) or None,
                          config=config, **credentials)


def _errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return BotoCoreError, ClientError


def _missing(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code in ("NoSuchKey", "404", "NotFound", "NoSuchUpload")


class StagedObject:
    """A staged upload: an object under staging/ (complete once `finish` returned)."""

    def __init__(self, key: str, size: int) -> None:
        self.key = key
        self.size = size


class S3Store:
    kind = "s3"

    def __init__(self, settings: S3Settings, local_root: Path) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self.local_root = local_root  # images are processed from a bounded local temp file
        self.tmp_dir = local_root / "tmp"
        self.client: Any = None
        self._presigner: Any = None
        self._errors = _errors()

    # -- set-up ------------------------------------------------------------------------

    async def prepare(self, node_id: int) -> None:
        await trio.to_thread.run_sync(prepare_local_root, self.local_root)
        self.client = await trio.to_thread.run_sync(make_client, self.settings)
        if self.settings.presigned_downloads:
            self._presigner = await trio.to_thread.run_sync(
                make_client, self.settings, self.settings.presign_endpoint or self.settings.endpoint)
        await self._call(self._check_bucket)
        removed = await self.sweep_staging(time.time(), node_id)
        if removed:
            log.info("removed %d uploads this node left unfinished", removed)

    def _check_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except self._errors as exc:
            if not (_missing(exc) or "NoSuchBucket" in str(exc)) or not self.settings.create_bucket:
                raise
            try:
                self.client.create_bucket(Bucket=self.bucket)
            except self._errors as exc2:  # another node made it a moment ago
                if "BucketAlready" not in str(exc2):
                    raise

    def key(self, name: str) -> str:
        return self.prefix + name

    def temp_path(self) -> Path:
        return self.tmp_dir / f"{secrets.token_hex(12)}.part"

    def staging_key(self, node_id: int) -> str:
        return self.key(f"staging/{node_id}/{time.time_ns() // 1_000_000:013d}-{secrets.token_hex(8)}")

    async def _call(self, fn: Any, *args: Any) -> Any:
        """Run a blocking client call in a worker thread; store failures become
        StoreUnavailable (a missing object: MissingContent)."""
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except self._errors as exc:
            if _missing(exc):
                raise MissingContent(str(exc)) from exc
            raise StoreUnavailable(f"the object store failed: {exc}") from exc

    # -- uploads ----------------------------------------------------------------------

    def new_upload(self, node_id: int) -> ObjectUpload:
        return ObjectUpload(self, self.staging_key(node_id))

    def reader(self, staged: Any) -> BinaryIO:
        if isinstance(staged, LocalFile):
            return open(staged.path, "rb", buffering=64 * 1024)
        return RangeReader(self.client, self.bucket, staged.key, staged.size)

    async def install(self, sha: str, staged: Any, thumb: bytes | None) -> None:
        await self._call(self._install, sha, staged, thumb)

    def _install(self, sha: str, staged: Any, thumb: bytes | None) -> None:
        meta = {"sha256": sha}
        if thumb is not None:
            self.client.put_object(Bucket=self.bucket, Key=self.key(content_name(sha, THUMBNAIL)), Body=thumb,
                                   ContentType="image/jpeg", Metadata=meta)
        target = self.key(content_name(sha, CONTENT))
        if isinstance(staged, LocalFile):
            with open(staged.path, "rb") as f:
                self.client.put_object(Bucket=self.bucket, Key=target, Body=f, Metadata=meta)
        elif staged.size < COPY_LIMIT:
            self.client.copy_object(Bucket=self.bucket, Key=target, CopySource={"Bucket": self.bucket, "Key": staged.key},
                                    Metadata=meta, MetadataDirective="REPLACE")
        else:
            self.client.copy({"Bucket": self.bucket, "Key": staged.key}, self.bucket, target,
                             ExtraArgs={"Metadata": meta, "MetadataDirective": "REPLACE"})

    async def discard(self, staged: Any) -> None:
        with trio.CancelScope(shield=True):
            if isinstance(staged, LocalFile):
                await trio.to_thread.run_sync(lambda: staged.path.unlink(missing_ok=True))
                return
            try:
                await self._call(lambda: self.client.delete_object(Bucket=self.bucket, Key=staged.key))
            except (StoreUnavailable, MissingContent) as exc:  # the collector sweeps it later
                log.warning("could not delete staged upload %s: %s", staged.key, exc)

    async def remove(self, sha: str) -> None:
        def delete() -> None:
            for variant in (CONTENT, THUMBNAIL):
                self.client.delete_object(Bucket=self.bucket, Key=self.key(content_name(sha, variant)))

        await self._call(delete)

    # -- downloads ----------------------------------------------------------------------

    async def size(self, sha: str, variant: str) -> int:
        head = await self._call(lambda: self.client.head_object(Bucket=self.bucket,
                                                                Key=self.key(content_name(sha, variant))))
        return int(head["ContentLength"])

    async def open_range(self, sha: str, variant: str, first: int, last: int) -> AsyncIterator[bytes]:
        key = self.key(content_name(sha, variant))
        answer = await self._call(lambda: self.client.get_object(Bucket=self.bucket, Key=key,
                                                                 Range=f"bytes={first}-{last}"))
        return self._stream(answer["Body"], last - first + 1)

    async def _stream(self, body: Any, length: int) -> AsyncIterator[bytes]:
        """The body of a GET in READ_CHUNK reads, each in a worker thread; a store that
        stops answering ends the stream with StoreUnavailable after `timeout` seconds."""
        try:
            remaining = length
            while remaining > 0:
                try:
                    data = await trio.to_thread.run_sync(body.read, min(READ_CHUNK, remaining))
                except Exception as exc:  # urllib3's read errors are not botocore's
                    raise StoreUnavailable(f"the object store failed mid-download: {exc}") from exc
                if not data:
                    raise StoreUnavailable(f"the object store ended the download {remaining} bytes early")
                remaining -= len(data)
                yield data
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(body.close)

    def presign(self, sha: str, variant: str, mime: str, disposition: str) -> str | None:
        if self._presigner is None:
            return None
        return self._presigner.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.key(content_name(sha, variant)),
                    "ResponseContentType": mime, "ResponseContentDisposition": disposition},
            ExpiresIn=int(self.settings.presign_ttl),
        )

    # -- listing (the collector, tests, `chatnode media copy`) ----------------------------

    async def list_content(self) -> list[tuple[str, float]]:
        def walk() -> list[tuple[str, float]]:
            out = []
            for obj in self._objects(self.key("content/")):
                name = obj["Key"].rsplit("/", 1)[-1]
                if is_sha(name):
                    out.append((name, obj["LastModified"].timestamp()))
            return out

        return await self._call(walk)

    def _objects(self, prefix: str):
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def _multipart_uploads(self, prefix: str):
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Uploads", []) or []

    async def staging(self) -> dict[str, list[str]]:
        """What is staged now: {"objects": [keys], "multipart": [keys]} (tests, the admin)."""
        def walk() -> dict[str, list[str]]:
            prefix = self.key("staging/")
            return {"objects": [o["Key"] for o in self._objects(prefix)],
                    "multipart": [u["Key"] for u in self._multipart_uploads(prefix)]}

        return await self._call(walk)

    async def sweep_staging(self, older_than: float, node_id: int | None = None) -> int:
        """Abort multipart uploads and delete staged objects started before `older_than`
        (Unix seconds), under one node's staging prefix or everyone's."""
        prefix = self.key("staging/" if node_id is None else f"staging/{node_id}/")

        def sweep() -> int:
            removed = 0
            for upload in list(self._multipart_uploads(prefix)):
                if upload["Initiated"].timestamp() < older_than:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                       UploadId=upload["UploadId"])
                    removed += 1
            for obj in list(self._objects(prefix)):
                if obj["LastModified"].timestamp() < older_than:
                    self.client.delete_object(Bucket=self.bucket, Key=obj["Key"])
                    removed += 1
            return removed

        return await self._call(sweep)

    async def usage(self) -> dict[str, int]:
        def walk() -> dict[str, int]:
            files = size = 0
            for obj in self._objects(self.key("content/")):
                files += 1
                size += obj["Size"]
            return {"files": files, "bytes": size}

        return await self._call(walk)

    async def aclose(self) -> None:
        for client in (self.client, self._presigner):
            if client is not None:
                await trio.to_thread.run_sync(client.close)


class ObjectUpload:
    """Streams an upload into a staging key: one part of `part_size` buffered, sent as a
    multipart part when full (in a worker thread, hashed there); an upload smaller than
    one part becomes a single object at `finish`.

    Backpressure: `write` returns once the part it completed is in the store, so the
    client is read no faster than the store takes it. Memory: at most one part.
    """

    def __init__(self, store: S3Store, key: str) -> None:
        self.store = store
        self.key = key
        self.size = 0
        self._client = store.client
        self._bucket = store.bucket
        self._part_size = store.settings.part_size
        self._buffer = bytearray()
        self._hash = hashlib.sha256()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._done = False

    async def open(self) -> None:
        pass

    async def write(self, data: bytes) -> None:
        self._buffer += data
        self.size += len(data)
        while len(self._buffer) >= self._part_size:
            part = bytes(self._buffer[: self._part_size])
            del self._buffer[: self._part_size]
            await self.store._call(self._send_part, part)

    def _send_part(self, part: bytes) -> None:
        self._hash.update(part)
        if self._upload_id is None:
            self._upload_id = self._client.create_multipart_upload(Bucket=self._bucket, Key=self.key)["UploadId"]
        number = len(self._parts) + 1
        answer = self._client.upload_part(Bucket=self._bucket, Key=self.key, UploadId=self._upload_id,
                                          PartNumber=number, Body=part)
        self._parts.append({"ETag": answer["ETag"], "PartNumber": number})

    async def finish(self) -> str:
        rest, self._buffer = bytes(self._buffer), bytearray()
        await self.store._call(self._finish, rest)
        self._done = True
        return self._hash.hexdigest()

    def _finish(self, rest: bytes) -> None:
        if self._upload_id is None:
            self._hash.update(rest)
            self._client.put_object(Bucket=self._bucket, Key=self.key, Body=rest)
            return
        if rest:
            self._send_part(rest)
        self._client.complete_multipart_upload(Bucket=self._bucket, Key=self.key, UploadId=self._upload_id,
                                               MultipartUpload={"Parts": self._parts})

    def staged(self) -> StagedObject:
        return StagedObject(self.key, self.size)

    async def abort(self) -> None:
        """Abort the multipart upload and delete the staged object (shielded)."""
        self._buffer = bytearray()
        with trio.CancelScope(shield=True):
            try:
                await self.store._call(self._abort)
            except (StoreUnavailable, MissingContent) as exc:  # the collector sweeps it later
                log.warning("could not remove the unfinished upload %s: %s", self.key, exc)

    def _abort(self) -> None:
        if self._upload_id is not None and not self._done:
            try:
                self._client.abort_multipart_upload(Bucket=self._bucket, Key=self.key, UploadId=self._upload_id)
            except self.store._errors as exc:
                if not _missing(exc):
                    raise
        self._client.delete_object(Bucket=self._bucket, Key=self.key)


class RangeReader(io.RawIOBase):
    """A seekable, read-only file over an object, read in READER_BLOCK ranged GETs with a
    small cache: what probing a header needs (a few reads near the start and the end)."""

    def __init__(self, client: Any, bucket: str, key: str, size: int) -> None:
        super().__init__()
        self._client, self._bucket, self._key, self._size = client, bucket, key, size
        self._pos = 0
        self._blocks: dict[int, bytes] = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _block(self, index: int) -> bytes:
        block = self._blocks.get(index)
        if block is None:
            first = index * READER_BLOCK
            last = min(self._size, first + READER_BLOCK) - 1
            answer = self._client.get_object(Bucket=self._bucket, Key=self._key, Range=f"bytes={first}-{last}")
            block = answer["Body"].read()
            if len(self._blocks) >= 8:
                self._blocks.pop(next(iter(self._blocks)))
            self._blocks[index] = block
        return block

    def read(self, size: int = -1) -> bytes:
        end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        out = bytearray()
        while self._pos < end:
            index, offset = divmod(self._pos, READER_BLOCK)
            block = self._block(index)
            piece = block[offset: offset + end - self._pos]
            if not piece:
                break
            out += piece
            self._pos += len(piece)
        return bytes(out)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


__all__ = ["ObjectUpload", "RangeReader", "S3Store", "StagedObject", "make_client"]
