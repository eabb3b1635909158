"""Serving the HTTP app with hypercorn, with keep-alive connections that let shutdown go.

hypercorn's trio server closes an idle keep-alive connection when the server shuts down
(or after `keep_alive_timeout`) from a per-connection idle task. After a request, that
task is started from inside the app's own task, and quart-trio cancels its request
nursery as the response ends; a task started from a cancelled context is never moved to
its nursery (trio's `TaskStatus.started`), so it dies at once. Every connection that has
served a request then stays open until the client closes it, and shutdown waited the
whole `graceful_timeout` for any browser tab.

The same cancellation cut short closing a connection whose request was in progress at
shutdown, once its response was sent, so that one waited for `graceful_timeout` too.

`serve` is hypercorn's `worker_serve` cut down to what a node uses (one plain socket,
made by the node) with two changes: `_TCPServer`, which shields those two steps from that
cancellation (and ends a connection as soon as its client hangs up, where hypercorn kept
its task until the idle timeout), and an optional `guard` that each accepted connection passes before
hypercorn sees it (the node's connection limits, node/core/connlimit.py: hypercorn has no
hook between accepting a connection and serving it). Idle connections then close at once on shutdown (and after
`keep_alive_timeout` otherwise); requests in progress get `graceful_timeout` and their
connection closes as soon as the response is sent.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from functools import partial

import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, Updated
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIFramework, ConnectionState
from hypercorn.utils import wrap_app


class _TCPServer(TCPServer):
    """One HTTP connection whose idle task, and closing after a response during shutdown,
    survive the end of the request that led to them.

    Both are reached from the app's task as its response ends, when quart-trio has
    already cancelled it; neither waits for the peer, so shielding them is safe.
    """

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated) and event.idle:
            with trio.CancelScope(shield=True):
                await self.idle_task.restart(self._task_group, self._idle_timeout)
        elif isinstance(event, Closed):
            with trio.CancelScope(shield=True):
                await self._close_when_sent()  # EOF and close: the reader task then ends the connection
            await self.protocol.handle(Closed())
        else:
            await super().protocol_send(event)

    async def _close_when_sent(self) -> None:
        """Close after any write in progress. The reader task closes a connection whose
        client sent what cannot be answered on it (the rest of a refused body, say) while
        the app's task may still be writing the answer; closing in the middle of that write
        made it fail with BusyResourceError, logged as an error of the app."""
        if self.send_lock.statistics().owner is trio.lowlevel.current_task():
            await self._close()  # (reached from a failed write, which holds the lock)
        else:
            async with self.send_lock:
                await self._close()

    async def _read_data(self) -> None:
        """Read until the peer is gone; then its idle task has nothing left to time out
        (it would hold the connection's task, and its place in the per-address count, for
        `keep_alive_timeout` after the client hung up)."""
        await super()._read_data()
        with trio.CancelScope(shield=True):
            await self.idle_task.stop()


async def serve(
    app: ASGIFramework,
    config: Config,
    sock: socket.socket,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    guard: Callable[[Callable[[trio.SocketStream], Awaitable[object]]], Callable[[trio.SocketStream], Awaitable[None]]]
    | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on the listening socket `sock` (closed when done) until
    `shutdown_trigger()` returns; then stop accepting, close idle connections and give
    requests in progress `config.graceful_timeout` seconds. `guard` wraps the handler of
    each accepted connection."""
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    state: dict = {}
    lifespan = Lifespan(wrapped, config, state)
    context = WorkerContext(None)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            handler: Callable[[trio.SocketStream], Awaitable[object]]
            handler = partial(_TCPServer, wrapped, config, context, ConnectionState(state.copy()))
            if guard is not None:
                handler = guard(handler)
            try:
                async with trio.open_nursery() as accepting:
                    serving = partial(trio.serve_listeners, handler, [listener], handler_nursery=connections)
                    await accepting.start(serving)
                    task_status.started()
                    await shutdown_trigger()
                    accepting.cancel_scope.cancel()
            finally:
                await listener.aclose()  # closes the socket before its checkpoint, even when cancelled
                await context.terminated.set()  # idle connections close now, busy ones after their response
                connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
