"""What one user may upload, and the disk-space floor (docs/media.md, "Quotas").

- Stored bytes: the uploads a user keeps (each counted at its stored size, until it is
  collected) may take at most `max_user_bytes`, in at most `max_user_items` uploads.
  Uploads under way on this node count as well, at the bytes received so far, so several
  at once cannot slip past the quota together.
- Upload rate: at most `user_upload_bytes_per_hour` bytes per user (a token bucket per
  user on this node, charged as the bytes arrive; it holds one hour's worth).
- Disk floor: an upload is refused while it would leave less than `min_free_disk_bytes`
  free on the filesystem of the node's data dir or of the media dir (the database needs
  that room: messages keep working when uploads no longer do).

Each refusal is a documented error (`quota_exceeded`, `rate_limited`, `storage_full`),
raised before the upload is stored; what was received is thrown away.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from pathlib import Path

import trio

from ... import ChatError
from .records import Records
from .settings import MediaSettings

MAX_BUCKETS = 100_000  # users whose upload rate is remembered (least recently used go first)
DISK_CHECK_BYTES = 16 * 1024 * 1024  # while an upload streams, the disk is looked at again this often


class UploadMeter:
    """One upload's account: `add` each chunk as it arrives, `check_stored` before storing."""

    def __init__(self, quotas: Quotas, user_id: int, stored: int) -> None:
        self._quotas = quotas
        self.user_id = user_id
        self.stored = stored  # what the user's kept uploads took when this one began
        self.received = 0
        self._unchecked = 0  # bytes since the disk was last looked at

    async def add(self, size: int) -> None:
        """Count `size` more bytes of this upload against the quota, the rate and the disk."""
        quotas = self._quotas
        self.received += size
        quotas.in_flight[self.user_id] = quotas.in_flight.get(self.user_id, 0) + size
        quotas.check_bytes(self.stored + quotas.in_flight[self.user_id])
        quotas.charge_rate(self.user_id, size)
        self._unchecked += size
        if self._unchecked >= DISK_CHECK_BYTES:
            self._unchecked = 0
            await quotas.check_disk(0)

    async def check_stored(self) -> None:
        """Just before the upload is stored: what the user keeps now (other uploads may
        have finished meanwhile) and what is still arriving fit the quota."""
        quotas = self._quotas
        stored, items = await quotas.usage(self.user_id)
        quotas.check_items(items)
        quotas.check_bytes(stored + quotas.in_flight.get(self.user_id, 0))

    def close(self) -> None:
        quotas = self._quotas
        left = quotas.in_flight.get(self.user_id, 0) - self.received
        if left > 0:
            quotas.in_flight[self.user_id] = left
        else:
            quotas.in_flight.pop(self.user_id, None)
        self.received = 0


class Quotas:
    def __init__(self, settings: MediaSettings, records: Records, paths: list[Path], clock=time.monotonic) -> None:
        self.settings = settings
        self.records = records
        self.paths = paths
        self.in_flight: dict[int, int] = {}  # user -> bytes of their uploads under way here
        self._clock = clock
        self._rate = settings.user_upload_bytes_per_hour / 3600
        self._buckets: OrderedDict[int, list[float]] = OrderedDict()  # user -> [tokens, stamp]
        self.refused = {"quota": 0, "rate": 0, "disk": 0}

    async def usage(self, user_id: int) -> tuple[int, int]:
        """(bytes, uploads) the user keeps (every node's uploads: the records are shared)."""
        return await self.records.owned_by(user_id, limit=self.settings.max_user_items + 1)

    async def begin(self, user_id: int, declared: int | None) -> UploadMeter:
        """Before anything of an upload is read: refuse it if what is declared (or, with
        no Content-Length, one more byte) would not fit; else its meter."""
        incoming = max(1, declared or 0)
        stored, items = await self.usage(user_id)
        self.check_items(items + 1)
        self.check_bytes(stored + self.in_flight.get(user_id, 0) + incoming)
        self.check_rate(user_id, incoming)
        await self.check_disk(incoming)
        return UploadMeter(self, user_id, stored)

    def check_items(self, items: int) -> None:
        limit = self.settings.max_user_items
        if limit and items > limit:
            self.refused["quota"] += 1
            raise ChatError("quota_exceeded", f"you keep {limit} uploads, the most a user may; "
                                              "uploads no message carries are deleted after a while")

    def check_bytes(self, total: int) -> None:
        limit = self.settings.max_user_bytes
        if limit and total > limit:
            self.refused["quota"] += 1
            raise ChatError("quota_exceeded", f"your uploads may take at most {limit} bytes; "
                                              "uploads no message carries are deleted after a while")

    def _bucket(self, user_id: int) -> list[float]:
        burst = float(self.settings.user_upload_bytes_per_hour)
        now = self._clock()
        bucket = self._buckets.pop(user_id, None)
        if bucket is None:
            bucket = [burst, now]
        else:
            bucket[0] = min(burst, bucket[0] + (now - bucket[1]) * self._rate)
            bucket[1] = now
        self._buckets[user_id] = bucket
        while len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)
        return bucket

    def check_rate(self, user_id: int, size: int) -> None:
        """Refuse an upload of `size` bytes the bucket cannot pay for now (nothing is taken)."""
        budget = self.settings.user_upload_bytes_per_hour
        if budget and (available := self._bucket(user_id)[0]) < size:
            # Retry-After: when the budget pays for it (never, for one bigger than the budget)
            self._rate_limited((size - available) / self._rate if size <= budget else None)

    def charge_rate(self, user_id: int, size: int) -> None:
        if not self.settings.user_upload_bytes_per_hour:
            return
        bucket = self._bucket(user_id)
        bucket[0] -= size
        if bucket[0] < 0:
            bucket[0] = 0.0
            self._rate_limited(None)  # (charged chunk by chunk: the upload's whole size is not known)

    def _rate_limited(self, retry_after: float | None) -> None:
        self.refused["rate"] += 1
        raise ChatError("rate_limited", f"uploads are limited to {self.settings.user_upload_bytes_per_hour} "
                                        "bytes per hour; try again later", retry_after=retry_after)

    async def check_disk(self, incoming: int) -> None:
        """Refuse an upload that would leave less than the floor free on any of the paths."""
        floor = self.settings.min_free_disk_bytes
        if not floor:
            return
        free = await trio.to_thread.run_sync(_least_free, self.paths)
        if free - incoming < floor:
            self.refused["disk"] += 1
            raise ChatError("storage_full", "the node is short of disk space and takes no uploads for now; "
                                            "messages still work")


def _least_free(paths: list[Path]) -> int:
    """The fewest bytes free to the node on the filesystems of `paths` (blocking: a thread)."""
    free = []
    for path in paths:
        stat = os.statvfs(path)
        free.append(stat.f_bavail * stat.f_frsize)
    return min(free)
