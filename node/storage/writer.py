"""The single LMDB writer: group commit.

Every write in the node goes through `Writer.write`. Concurrent requests queue in one
bounded channel; the writer task drains what is waiting and commits it as one
transaction inside one worker-thread call (LMDB write transactions must begin and end
on the same thread). A caller is answered only after that commit is durable, so the
cost of an fsync is shared by everything that arrived while the previous one ran.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
import lmdb
import trio

if TYPE_CHECKING:
    from .env import Storage

log = logging.getLogger(__name__)


@attrs.define
class WriteBatch:
    """Puts and deletes to apply atomically, in order. `None` as value deletes the key."""

    ops: list[tuple[str, bytes, bytes | None]] = attrs.Factory(list)

    def put(self, db: str, key: bytes, value: bytes) -> None:
        self.ops.append((db, key, value))

    def delete(self, db: str, key: bytes) -> None:
        self.ops.append((db, key, None))

    def extend(self, other: WriteBatch) -> None:
        self.ops.extend(other.ops)

    def __len__(self) -> int:
        return len(self.ops)


@attrs.define(eq=False)
class _Request:
    batch: WriteBatch
    done: trio.Event = attrs.Factory(trio.Event)
    error: BaseException | None = None


class Writer:
    """Owns the only write path into the environment. Run `serve` in a nursery."""

    def __init__(self, storage: Storage, *, max_batch: int, queue_size: int = 4096) -> None:
        self._storage = storage
        self._max_batch = max_batch
        self._send, self._recv = trio.open_memory_channel[_Request](queue_size)
        self.commits = 0
        self.committed_ops = 0
        self._commit_hooks: list[Callable[[], WriteBatch]] = []

    def add_commit_hook(self, hook: Callable[[], WriteBatch]) -> None:
        """`hook()` runs just before each commit; its writes join that transaction."""
        self._commit_hooks.append(hook)

    async def write(self, batch: WriteBatch) -> None:
        """Commit `batch` durably, together with whatever else is waiting.

        Returns once the data is on disk. Raises `StorageError` if the commit failed, in
        which case nothing of the batch was written.

        Cancellation: a request already queued is still committed; the caller just does
        not learn the outcome.
        """
        if not batch.ops:
            return
        request = _Request(batch)
        await self._send.send(request)
        await request.done.wait()
        if request.error is not None:
            raise request.error

    async def close(self) -> None:
        """Stop accepting writes; `serve` commits what is queued and returns."""
        await self._send.aclose()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with self._recv:
            async for first in self._recv:
                requests = [first]
                size = len(first.batch.ops)
                while size < self._max_batch:
                    try:
                        nxt = self._recv.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    requests.append(nxt)
                    size += len(nxt.batch.ops)
                await self._commit_requests(requests)

    async def _commit_requests(self, requests: list[_Request]) -> None:
        from .env import StorageError

        for hook in self._commit_hooks:
            batch = hook()
            if batch.ops:
                requests.append(_Request(batch))
        try:
            await self._commit_growing(requests)
        except StorageError as exc:
            for r in requests:
                r.error = exc
        except Exception as exc:  # an LMDB failure must reach the callers, not kill the node
            log.exception("commit of %d write requests failed", len(requests))
            for r in requests:
                r.error = StorageError(f"storage write failed: {exc}")
        else:
            self.commits += 1
            self.committed_ops += sum(len(r.batch.ops) for r in requests)
        for r in requests:
            r.done.set()

    async def _commit_growing(self, requests: list[_Request]) -> None:
        while True:
            try:
                await trio.to_thread.run_sync(_commit, self._storage.env, self._storage.handles, requests)
                return
            except lmdb.MapFullError:
                await self._storage.grow_map()


def _commit(
    env: lmdb.Environment, handles: dict[str, lmdb._Database], requests: list[_Request]
) -> None:
    """Runs in a worker thread: the whole transaction, begin to commit, on this thread."""
    with env.begin(write=True) as txn:
        for request in requests:
            for db, key, value in request.batch.ops:
                handle = handles[db]
                if value is None:
                    txn.delete(key, db=handle)
                else:
                    txn.put(key, value, db=handle)

