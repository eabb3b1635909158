"""Deciding when to notify which target, collapsing bursts, retrying failures.

`offer()` is called from the push plugin's event pump for every content message stored
for offline members; it never waits: it adds the message to each of the recipients'
targets and, if the target is idle, schedules it. Per target:

- the first message is sent at once; messages arriving within `collapse_window` seconds
  after a send are collected and sent together when the window ends, as one
  notification with their `count` (so a burst of 50 messages is 2 notifications);
- a failed send is retried after `retry_base` * 2^n seconds (at most `retry_max`, or
  the service's Retry-After), up to `max_attempts` tries, then dropped and counted;
  messages that arrive meanwhile ride along with the retry;
- an endpoint that answers 404 or 410 is removed;
- a push whose target cannot be read (the database failing over) is tried again
  `STORAGE_RETRY` seconds later, with what arrived meanwhile;
- nothing is sent to a user who came online in the meantime, nor for a chat the user
  muted, unless the message mentions them.

Tasks: one scheduler (a heap of due times) and `workers` senders fed by a bounded
channel. Each target is in the heap or the channel at most once, so memory is bounded by
the number of registered targets. Queued notifications live in memory only: a restart
drops them rather than notify about old messages.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from typing import Any

import attrs
import trio

from ... import Message, PluginContext
from .providers import PushFailed, PushGone
from .settings import PushSettings
from .targets import Targets

log = logging.getLogger(__name__)

STORAGE_RETRY = 1.0  # seconds before a push whose target could not be read is tried again

PREVIEW_MAX_BYTES = 1000  # a Web Push payload must stay under 4 KiB once encrypted


@attrs.define
class Pending:
    """Messages waiting for one target: how many, and the newest."""

    count: int
    message: dict[str, Any]

    def merge(self, newer: Pending | None) -> Pending:
        if newer is None:
            return self
        return Pending(self.count + newer.count, newer.message)


@attrs.define(eq=False)
class TargetState:
    target_id: int
    user_id: int
    pending: Pending | None = None
    busy: bool = False  # a worker holds it
    scheduled: bool = False  # in the heap or the ready channel
    not_before: float = -math.inf  # trio time before which no new send starts
    attempts: int = 0


class Dispatcher:
    def __init__(self, ctx: PluginContext, settings: PushSettings, providers: dict[str, Any], targets: Targets) -> None:
        self.ctx = ctx
        self.settings = settings
        self.providers = providers
        self.targets = targets
        self._states: dict[int, TargetState] = {}
        self._heap: list[tuple[float, int, int]] = []
        self._order = itertools.count()
        self._wakeup = trio.Event()
        self._ready_send, self._ready_recv = trio.open_memory_channel[int](settings.queue_size)
        self.stats = {"sent": 0, "retried": 0, "failed": 0, "removed": 0, "skipped_online": 0, "skipped_muted": 0,
                      "deferred": 0}

    # -- intake (event pump; never waits) -------------------------------------------------

    async def offer(self, message: Message, user_ids: list[int]) -> None:
        mentioned = message.record.get("mentions") or ()
        for user_id in user_ids:
            if str(user_id) not in mentioned:  # a mention gets through a mute
                member = await self.ctx.member(message.chat_id, user_id)
                if member is not None and member.muted:
                    self.stats["skipped_muted"] += 1
                    continue
            await self._add(user_id, dict(message.record))

    async def offer_reaction(self, chat_id: int, seq: int, message_id: int, user_id: int, emoji: str,
                             author_id: int, text: str | None) -> None:
        """`user_id` reacted to a message of `author_id`, who has no device online."""
        member = await self.ctx.member(chat_id, author_id)
        if member is not None and member.muted:
            self.stats["skipped_muted"] += 1
            return
        record = {"type": "reaction", "chat": str(chat_id), "from": str(user_id), "id": str(message_id), "seq": seq,
                  "ts": time.time_ns() // 1_000_000, "emoji": emoji, "text": text}
        await self._add(author_id, record)

    async def _add(self, user_id: int, record: dict[str, Any]) -> None:
        for target in await self.targets.of_user(user_id):
            target_id = int(target["id"])
            state = self._states.get(target_id)
            if state is None:
                state = self._states[target_id] = TargetState(target_id, user_id)
            arrived = Pending(1, record)
            state.pending = arrived if state.pending is None else state.pending.merge(arrived)
            if not state.busy and not state.scheduled:
                self._schedule(state, max(trio.current_time(), state.not_before))

    def _schedule(self, state: TargetState, when: float) -> None:
        state.scheduled = True
        heapq.heappush(self._heap, (when, next(self._order), state.target_id))
        self._wakeup.set()

    def forget(self, target_id: int) -> None:
        """A target was deleted: drop what is queued for it."""
        state = self._states.pop(target_id, None)
        if state is not None:
            state.pending = None

    # -- tasks ----------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the scheduler and the workers until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._scheduler)
            for _ in range(self.settings.workers):
                nursery.start_soon(self._worker)
            task_status.started()

    async def _scheduler(self) -> None:
        while True:
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                _, _, target_id = heapq.heappop(self._heap)
                state = self._states.get(target_id)
                if state is None:
                    continue
                if state.pending is None:  # the end of a quiet window: forget the target
                    state.scheduled = False
                    if not state.busy:
                        del self._states[target_id]
                    continue
                try:
                    self._ready_send.send_nowait(target_id)
                except trio.WouldBlock:  # every worker busy and the queue full: look again soon
                    heapq.heappush(self._heap, (now + 0.5, next(self._order), target_id))
                    break
            self._wakeup = trio.Event()
            deadline = self._heap[0][0] if self._heap else math.inf
            with trio.move_on_at(deadline):
                await self._wakeup.wait()

    async def _worker(self) -> None:
        async for target_id in self._ready_recv:
            state = self._states.get(target_id)
            if state is None:
                continue
            state.scheduled = False
            state.busy = True
            try:
                await self._deliver(state)
            finally:
                state.busy = False
            if self._states.get(target_id) is state and not state.scheduled:
                # next: what was held back (or a retry) when the window ends, else forget it then
                self._schedule(state, state.not_before)

    async def _deliver(self, state: TargetState) -> None:
        batch, state.pending = state.pending, None
        if batch is None:
            return
        try:
            target = await self.targets.get(state.user_id, state.target_id)
            online = target is not None and await self.ctx.is_online(state.user_id)
        except Exception as exc:  # storage away (a failover): the same push later
            log.warning("push to target %d not sent yet (%s); trying again", state.target_id, exc)
            self.stats["deferred"] += 1
            state.pending = batch.merge(state.pending)
            state.not_before = trio.current_time() + STORAGE_RETRY
            return
        provider = self.providers.get(target["kind"]) if target is not None else None
        if target is None or provider is None:
            self._states.pop(state.target_id, None)
            return
        if online:
            self.stats["skipped_online"] += 1
            return
        now = trio.current_time()
        try:
            with trio.fail_after(self.settings.timeout):
                await provider.send(target, await self.notification(batch))
        except PushGone as exc:
            log.info("push target %d of user %d removed: %s", state.target_id, state.user_id, exc)
            self.stats["removed"] += 1
            self._states.pop(state.target_id, None)
            try:
                await self.targets.delete(state.user_id, state.target_id)
            except Exception as exc:  # storage away: removed when it answers gone again
                log.warning("push target %d not removed yet (%s)", state.target_id, exc)
            return
        except Exception as exc:
            retry = not isinstance(exc, PushFailed) or exc.retry
            state.attempts += 1
            if retry and state.attempts < self.settings.max_attempts:
                self.stats["retried"] += 1
                state.pending = batch.merge(state.pending)
                delay = min(self.settings.retry_max, self.settings.retry_base * 2 ** (state.attempts - 1))
                if isinstance(exc, PushFailed) and exc.retry_after is not None:
                    delay = min(self.settings.retry_max, max(delay, exc.retry_after))
                state.not_before = trio.current_time() + delay
                log.debug("push to target %d failed (%s); retry %d in %.1fs", state.target_id, exc,
                          state.attempts, delay)
                return
            self.stats["failed"] += 1
            log.warning("push to target %d of user %d failed for good: %s", state.target_id, state.user_id,
                        _describe(exc))
            state.attempts = 0
            state.not_before = now + self.settings.collapse_window
            return
        self.stats["sent"] += 1
        state.attempts = 0
        state.not_before = now + self.settings.collapse_window

    # -- what a notification says -------------------------------------------------------

    async def notification(self, pending: Pending) -> dict[str, Any]:
        """The payload: ids and a count; with `previews`, also who wrote what."""
        message = pending.message
        out = {
            "type": message.get("type", "message"),
            "node": self.ctx.node_name,
            "chat": message["chat"],
            "from": message.get("from"),
            "message": message["id"],
            "seq": message["seq"],
            "ts": message["ts"],
            "count": pending.count,
        }
        if message.get("type") == "reaction":
            out["emoji"] = message["emoji"]
        if self.settings.previews:
            if "kind" in message:
                out["kind"] = message["kind"]
            sender = await self.ctx.user(int(message["from"])) if message.get("from") else None
            if sender is not None:
                out["sender_name"] = sender.display_name
            text = message.get("text")
            if text:
                out["text"] = _cut(text, self.settings.preview_chars)
        return out

    def statistics(self) -> dict[str, Any]:
        return {**self.stats, "targets_waiting": len(self._states)}


def _cut(text: str, chars: int) -> str:
    if len(text) > chars:
        text = text[: chars - 1] + "…"
    raw = text.encode()
    if len(raw) > PREVIEW_MAX_BYTES:
        text = raw[: PREVIEW_MAX_BYTES - 3].decode("utf-8", "ignore") + "…"
    return text


def _describe(exc: BaseException) -> str:
    return str(exc) or exc.__class__.__name__
