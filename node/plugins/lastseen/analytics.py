"""Activity events as JSON lines appended to a file in the data dir, ready to ship to
Kafka or a log pipeline: presence changes, typing, messages sent (never their content).
Off unless `[plugins.analytics] enabled = true`.

Events are buffered and written once per `flush_interval` (or `max_buffer` events) through
trio's async file API, so writing never blocks the event loop.
"""

from __future__ import annotations

import os
import time
from typing import Any

import attrs
import orjson
import trio

from ... import Message, PluginContext, hookimpl


@attrs.frozen
class AnalyticsSettings:
    enabled: bool = False
    file: str = "analytics.jsonl"  # relative to the data dir
    flush_interval: float = attrs.field(default=1.0, validator=attrs.validators.gt(0.0))
    max_buffer: int = attrs.field(default=10_000, validator=attrs.validators.ge(1))


def _private(path: str, flags: int) -> int:
    """The activity log names users and when they were online: the node's user alone
    may read it, as every file in the data dir (one made by an older version too)."""
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class AnalyticsPlugin:
    name = "analytics"

    def __init__(self) -> None:
        self.settings = AnalyticsSettings()
        self._buffer: list[bytes] = []
        self._full = trio.Event()
        self._file: Any = None
        self.dropped = 0

    @hookimpl
    def register_settings(self):
        return ("analytics", AnalyticsSettings)

    @hookimpl
    async def startup(self, ctx: PluginContext, nursery) -> None:
        self.settings = ctx.settings
        if self.settings.enabled:
            self._file = await trio.open_file(ctx.data_dir / self.settings.file, "ab", opener=_private)
            nursery.start_soon(self._flusher)

    @hookimpl
    def on_user_online(self, user_id: int) -> None:
        self.record({"event": "online", "ts": now_ms(), "user": str(user_id)})

    @hookimpl
    def on_user_offline(self, user_id: int) -> None:
        self.record({"event": "offline", "ts": now_ms(), "user": str(user_id)})

    @hookimpl(optionalhook=True)  # declared by the lastseen plugin, which may be disabled
    def on_typing(self, chat_id: int, user_id: int, typing: bool) -> None:
        if typing:
            self.record({"event": "typing", "ts": now_ms(), "user": str(user_id), "chat": str(chat_id)})

    def record(self, event: dict[str, Any]) -> None:
        if self._file is None:
            return
        if len(self._buffer) >= self.settings.max_buffer:
            self.dropped += 1
            return
        self._buffer.append(orjson.dumps(event) + b"\n")
        if len(self._buffer) >= self.settings.max_buffer:
            self._full.set()

    @hookimpl
    def on_message_stored(self, message: Message) -> None:
        """Message activity, without content."""
        if self._file is not None and message.sender:
            self.record({"event": "message", "ts": message.ts, "user": str(message.sender),
                         "chat": str(message.chat_id), "kind": message.kind})

    async def _flusher(self) -> None:
        try:
            while True:
                with trio.move_on_after(self.settings.flush_interval):
                    await self._full.wait()
                self._full = trio.Event()
                await self.flush()
        finally:
            with trio.CancelScope(shield=True):
                await self.flush()
                await self._file.aclose()

    async def flush(self) -> None:
        if self._buffer:
            chunk, self._buffer = b"".join(self._buffer), []
            await self._file.write(chunk)
            await self._file.flush()
