"""One task reads every chat socket that has frames, and handles them where it can.

A connection's own task waiting for its socket costs, per frame, a re-registration with
trio's epoll (it arms each wait once), a scheduler round and the resumption of the
task's whole chain of awaits. Under one-message-per-frame traffic that is most frames,
and it was a large share of the node's CPU per message (bench/README.md). Here the
sockets stay registered in an epoll set of their own, trio waits on that set alone, and
when it is ready this task reads each ready socket and runs its frames' handlers in turn:
most finish without an await (a `send` queued for the sequencer, a `received`, a
`ping`).

The hub reads only while the sequencer's queue has room for what a round of reads may offer
it (`ROOM_PER_ROUND`); otherwise it waits for the sequencer's next batch, and the frames
wait in the sockets. A saturated node thus keeps reading in the hub: were a frame read into
a full queue, its session would be handed back to its own task to wait for room, a path
that costs several times as much per message and pushed a saturated node into taking it
for most frames (bench/README.md).

A session is watched only while it is between messages (`Session.read_ready`); anything
else (a handler that must await, a frame of several events, a ping, a close, the end of
the connection, a protocol error) is handed back to the session's own task, which reads
on by itself until it is between messages again. So per-connection order and
backpressure stay as they were: a session never has two frames in hand at once.
"""

from __future__ import annotations

import logging
import select
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from .chats import Chats
    from .session import Session

log = logging.getLogger(__name__)

READY_PER_ROUND = 128  # sockets handled per wake-up before other tasks get a turn
# Free places the sequencer's queue must have before a round of reads: room for what the
# round's frames offer to it, so that a full queue rarely hands a session back.
ROOM_PER_ROUND = 1024
_WATCHED = select.EPOLLIN | select.EPOLLRDHUP


class ReadHub:
    """The node's read loop for chat sockets. Run `serve` in a nursery that outlives the
    sessions; `close` ends it."""

    def __init__(self, sequencer: Chats | None = None) -> None:
        self._sequencer = sequencer
        self._epoll = select.epoll()
        self._sessions: dict[int, Session] = {}  # descriptor -> its session, registered
        self._active: set[int] = set()  # ... of which these are watched now
        self._scope = trio.CancelScope()
        self._closed = False

    def watch(self, fd: int, session: Session) -> bool:
        """Report `fd`'s frames to `session.read_ready` until `pause`; False if the hub
        has closed (the session reads by itself)."""
        if self._closed or fd < 0:
            return False
        if fd in self._active:
            return True
        if self._sessions.get(fd) is session:
            self._epoll.modify(fd, _WATCHED)
        else:
            self._forget_fd(fd)  # a number reused from a closed socket
            self._epoll.register(fd, _WATCHED)
            self._sessions[fd] = session
        self._active.add(fd)
        return True

    def pause(self, fd: int, session: Session) -> None:
        """Stop reporting `fd` (it stays registered: watching it again costs one call)."""
        if not self._closed and fd in self._active and self._sessions.get(fd) is session:
            self._active.discard(fd)
            try:
                self._epoll.modify(fd, 0)
            except OSError:  # closed meanwhile: the kernel dropped it from the set
                self._forget_fd(fd)

    def forget(self, fd: int, session: Session) -> None:
        """The session ends: drop its descriptor (before it is closed, or after: both are safe)."""
        if not self._closed and self._sessions.get(fd) is session:
            self._forget_fd(fd)

    def _forget_fd(self, fd: int) -> None:
        self._active.discard(fd)
        if self._sessions.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except OSError:  # already closed: the kernel dropped it from the set
                pass

    async def serve(self) -> None:
        with self._scope:
            epoll = self._epoll
            sequencer = self._sequencer
            while True:
                try:
                    await trio.lowlevel.wait_readable(epoll.fileno())
                except trio.ClosedResourceError:  # `close`
                    return
                if sequencer is not None and sequencer.room() < ROOM_PER_ROUND:
                    await sequencer.wait_for_room(ROOM_PER_ROUND)
                for fd, _ in epoll.poll(0, READY_PER_ROUND):
                    session = self._sessions.get(fd)
                    if session is None or fd not in self._active:
                        continue
                    try:
                        session.read_ready()
                    except Exception:  # one connection's bug must not stop everyone's reading
                        log.exception("chat session crashed")
                        self.pause(fd, session)
                        session.crashed()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._scope.cancel()
        trio.lowlevel.notify_closing(self._epoll.fileno())
        self._epoll.close()
        self._sessions.clear()
        self._active.clear()
