"""The push provider contract, and the endpoint rules every built-in provider applies.

A provider delivers a notification to one kind of target. Plugins add providers with the
`register_push_providers(ctx)` hook, returning `{"kind": provider}`; a target registered
with `{"kind": "<kind>", ...}` is then served by that provider. A provider has:

- `check_target(body) -> dict`: validate a registration body (`POST /api/push/targets`)
  and return the fields to keep (at least `endpoint`); raise `ChatError("bad_request")`.
- `async send(target, notification) -> None`: deliver `notification` (a JSON-able dict)
  to the stored `target`. Raise `PushGone` when the endpoint no longer exists (the target
  is removed), `PushFailed(retry=False)` for a failure that retrying cannot fix, and
  anything else (including `PushFailed(retry_after=...)`) to be retried with backoff.

Endpoints are URLs the *user* chose, and the node will POST to them: without care that
would let anyone make the node call services on its own network. Unless
`allow_private_endpoints` is set, endpoints must be https and their host must resolve
only to public addresses, checked both at registration and before every request; the
request then goes to those very addresses (http_client.py). Not public: what Python's
`ipaddress` does not call global, multicast, and the IPv6 ranges that carry an IPv4
address a gateway or the host itself may route anywhere, the internal network included
(NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`, 6to4 `2002::/16`, IPv4-compatible `::/96`);
an IPv4-mapped address (`::ffff:a.b.c.d`) is judged by its IPv4 address.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Protocol
from urllib.parse import urlsplit

import trio

from ... import ChatError

MAX_ENDPOINT_CHARS = 2048

#: IPv6 ranges that embed an IPv4 address and are refused whatever that address is.
EMBEDDING_IPV4 = tuple(ipaddress.ip_network(net) for net in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "::/96"))


class PushGone(Exception):
    """The push endpoint no longer exists (404 or 410): remove the target."""


class PushFailed(Exception):
    """A delivery failed; `retry=False` when trying again cannot help."""

    def __init__(self, message: str, *, retry: bool = True, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry = retry
        self.retry_after = retry_after


class PushProvider(Protocol):
    def check_target(self, body: dict[str, Any]) -> dict[str, Any]: ...

    async def send(self, target: dict[str, Any], notification: dict[str, Any]) -> None: ...


def check_endpoint(endpoint: Any, allow_private: bool) -> str:
    """Validate an endpoint URL at registration (shape, scheme, literal addresses)."""
    if not isinstance(endpoint, str) or not endpoint or len(endpoint) > MAX_ENDPOINT_CHARS:
        raise ChatError("bad_request", f"'endpoint' must be a URL of at most {MAX_ENDPOINT_CHARS} characters")
    parts = urlsplit(endpoint)
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes or not parts.hostname:
        raise ChatError("bad_request", f"'endpoint' must be an {' or '.join(schemes)} URL")
    if not allow_private and _private_name(parts.hostname):
        raise ChatError("bad_request", "'endpoint' must be on a public address")
    return endpoint


def _private_name(host: str) -> bool:
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        return not _public(ipaddress.ip_address(host))
    except ValueError:
        return False  # a name: its addresses are checked before each request


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif any(address in network for network in EMBEDDING_IPV4):
            return False
    return address.is_global and not address.is_multicast


async def checked_addresses(host: str, port: int, allow_private: bool) -> list[str]:
    """Before a request: resolve `host` once; every address must be public (unless
    `allow_private`). Returns them, in the resolver's order, for the request to use."""
    if not allow_private and _private_name(host):
        raise PushFailed(f"{host} is not a public address", retry=False)
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    except OSError as exc:
        raise PushFailed(f"cannot resolve {host}: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private and not all(_public(ipaddress.ip_address(address)) for address in addresses):
        raise PushFailed(f"{host} resolves to a non-public address", retry=False)
    if not addresses:
        raise PushFailed(f"cannot resolve {host}")
    return addresses


def check_status(status: int, headers: Any) -> None:
    """Map a push service's answer to the contract: 2xx ok, 404/410 gone, 429/5xx retry."""
    if 200 <= status < 300:
        return
    if status in (404, 410):
        raise PushGone(f"the endpoint answered {status}")
    if status == 429 or status >= 500:
        raise PushFailed(f"the endpoint answered {status}", retry_after=_retry_after(headers.get("Retry-After")))
    raise PushFailed(f"the endpoint answered {status}", retry=False)


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return float(value.strip())
    return None
