"""The single writer: group commit, the same for every engine.

Every write in the node goes through `Writer.write`. Concurrent requests queue in one
bounded channel; the writer task drains what is waiting and hands it to the engine as
one transaction (one worker-thread call). A caller is answered only after that commit is
durable, so the cost of an fsync (or a PostgreSQL round trip) is shared by everything
that arrived while the previous one ran.

When a combined transaction is refused for a conflict, the requests are committed again
one by one, so that only the request that broke an invariant fails: a send racing a
second owner of its chat must not take an unrelated registration down with it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import attrs
import trio

from .api import StorageConflict, StorageError
from .batch import Op, WriteBatch

log = logging.getLogger(__name__)

#: The engine's commit: apply each request's ops, in order, in ONE transaction.
Commit = Callable[[list[list[Op]]], Awaitable[None]]


@attrs.define(eq=False)
class _Request:
    ops: list[Op]
    done: trio.Event = attrs.Factory(trio.Event)
    error: BaseException | None = None
    on_error: Callable[[], None] | None = None  # a commit hook's: its writes were not stored


class Writer:
    """Owns the only write path into an engine. Run `serve` in a nursery."""

    def __init__(self, commit: Commit, *, max_batch: int, queue_size: int = 4096) -> None:
        self._commit = commit
        self._max_batch = max_batch
        self._send, self._recv = trio.open_memory_channel[_Request](queue_size)
        self.commits = 0
        self.committed_ops = 0
        self.conflicts = 0
        self._commit_hooks: list[tuple[Callable[[], WriteBatch], Callable[[WriteBatch], None] | None]] = []
        #: Told (seconds, write ops) after each successful commit (the node's metrics).
        self.on_commit: Callable[[float, int], None] | None = None

    def add_commit_hook(self, hook: Callable[[], WriteBatch],
                        failed: Callable[[WriteBatch], None] | None = None) -> None:
        """`hook()`'s writes join the next commit; `failed(batch)` is told if that commit
        failed (nothing of it stored), so that what rode along can be kept for another."""
        self._commit_hooks.append((hook, failed))

    async def write(self, batch: WriteBatch) -> None:
        """Commit `batch` durably, together with whatever else is waiting (see Storage.write)."""
        if not batch.ops:
            return
        request = _Request(batch.ops)
        try:
            await self._send.send(request)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise StorageError("storage is closed: the node is shutting down") from None
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
                size = len(first.ops)
                while size < self._max_batch:
                    try:
                        nxt = self._recv.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    requests.append(nxt)
                    size += len(nxt.ops)
                for hook, failed in self._commit_hooks:
                    extra = hook()
                    if extra.ops:
                        requests.append(_Request(extra.ops, on_error=_bound(failed, extra)))
                await self._commit_requests(requests)

    async def _commit_requests(self, requests: list[_Request]) -> None:
        started = time.perf_counter()
        try:
            await self._commit([r.ops for r in requests])
        except StorageConflict as exc:
            self.conflicts += 1
            if len(requests) == 1:
                requests[0].error = exc
            else:  # find the culprit: each request alone, in order
                for request in requests:
                    await self._commit_requests([request])
                return
        except StorageError as exc:
            for r in requests:
                r.error = exc
        except Exception as exc:  # an engine failure must reach the callers, not kill the node
            log.exception("commit of %d write requests failed", len(requests))
            for r in requests:
                r.error = StorageError(f"storage write failed: {exc}")
        else:
            ops = sum(len(r.ops) for r in requests)
            self.commits += 1
            self.committed_ops += ops
            if self.on_commit is not None:
                self.on_commit(time.perf_counter() - started, ops)
        for r in requests:
            if r.error is not None and r.on_error is not None:
                try:
                    r.on_error()
                except Exception:
                    log.exception("a commit hook's failure callback failed")
            r.done.set()


def _bound(failed: Callable[[WriteBatch], None] | None, batch: WriteBatch) -> Callable[[], None] | None:
    return None if failed is None else lambda: failed(batch)
