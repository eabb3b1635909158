"""The push plugin's HTTP client: requests go only where the endpoint rules allow, and
what comes back costs a bounded amount of memory.

An endpoint is a URL a user chose; whoever runs its host name's DNS and its server is
not trusted. So every request:

- looks the host name up once, checks every address it resolves to (unless
  `allow_private_endpoints`), and connects only to those checked addresses: a DNS server
  that answers a public address for the check and a private one a moment later (DNS
  rebinding) gets nowhere, because there is no second lookup. The Host header and the TLS
  server name (SNI, and the certificate check) stay the endpoint's host name;
- sends `Accept-Encoding: identity` and never decodes a body: a server that answers a
  gzip bomb anyway only costs the compressed bytes it sends, and of those at most
  MAX_RESPONSE_BYTES are read (to keep a connection that served a small answer for the
  next request; past that the connection is dropped). The answer is its status and
  headers;
- follows no redirect and uses no proxy from the environment.

httpcore (the engine under httpx) does the HTTP; its network backend is where the pin is
enforced: it connects to the checked addresses of the request's host, and to nothing
else. Connections are pooled per host name, so a pooled one always leads to an address
that was checked when it was opened.
"""

from __future__ import annotations

import ssl
from contextlib import aclosing
from contextvars import ContextVar
from typing import Any

import attrs
import httpcore
import httpx
import trio

from .providers import PushFailed, checked_addresses

MAX_RESPONSE_BYTES = 4096  # body bytes read from an answer; a longer body drops the connection
KEEPALIVE = 30.0  # seconds an idle connection to a push service is kept

#: The checked addresses for the request in progress in this task: (host, addresses).
_pinned: ContextVar[tuple[str, tuple[str, ...]] | None] = ContextVar("push_pinned_addresses", default=None)


@attrs.frozen
class Answer:
    """What the node keeps of a push service's response."""

    status: int
    headers: dict[str, str]  # lower-case names


class PushHTTP:
    def __init__(self, *, timeout: float, connections: int, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._timeouts = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl.create_default_context(), max_connections=connections,
            keepalive_expiry=KEEPALIVE, network_backend=_PinnedBackend(),
        )

    async def post(self, endpoint: str, body: bytes, headers: dict[str, str]) -> Answer:
        """POST `body` to `endpoint` at an address that passed the check; raises PushFailed
        when the host has none (or cannot be resolved), httpcore's errors for the rest."""
        url = httpx.URL(endpoint)  # parses and IDNA-encodes the host the way httpx would
        host = url.raw_host.decode("ascii")
        addresses = await checked_addresses(host, url.port or (443 if url.scheme == "https" else 80),
                                            self.allow_private)
        token = _pinned.set((host, tuple(addresses)))
        try:
            target = httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path)
            sent = [(name.encode(), value.encode()) for name, value in headers.items()]
            sent.append((b"Accept-Encoding", b"identity"))
            async with self._pool.stream("POST", target, headers=sent, content=body,
                                         extensions={"timeout": self._timeouts}) as response:
                await _read_a_little(response)
                return Answer(response.status, {name.decode("latin-1").lower(): value.decode("latin-1")
                                                for name, value in response.headers})
        finally:
            _pinned.reset(token)

    async def aclose(self) -> None:
        await self._pool.aclose()


async def _read_a_little(response: httpcore.Response) -> None:
    """Read a small body to its end (the connection can then be reused); stop past
    MAX_RESPONSE_BYTES (the connection is then closed with the response). Nothing read is
    kept or decoded."""
    received = 0
    # httpcore annotates this async generator as an AsyncIterator, which has no aclose
    async with aclosing(response.aiter_stream()) as chunks:  # type: ignore[type-var]
        async for chunk in chunks:
            received += len(chunk)
            if received > MAX_RESPONSE_BYTES:
                return


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects to the checked addresses of the current request's host, in order."""

    def __init__(self) -> None:
        self._network = httpcore.TrioBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        pinned = _pinned.get()
        if pinned is None or pinned[0] != host:
            raise PushFailed(f"no checked address for {host}", retry=False)
        failure: Exception | None = None
        for address in pinned[1]:
            try:
                return await self._network.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        raise PushFailed("push endpoints are TCP only", retry=False)

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)
