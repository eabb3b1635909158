"""Who is asking, behind a reverse proxy: X-Forwarded-For and -Proto from trusted proxies.

Behind a proxy every request comes from the proxy's address, so the per-address login
limits would lump all clients together and the access log would name only the proxy.
With ``http.trusted_proxies`` set, a request whose peer is one of them is taken to come
from the rightmost X-Forwarded-For entry that is not a trusted proxy (entries further
left were written by the client and prove nothing), and X-Forwarded-Proto gives its
scheme. From any other peer the headers are ignored, so a client cannot pick its address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: list[str]) -> list[Network]:
    """Addresses or networks ("127.0.0.1", "10.0.0.0/8", "::1"); raises ValueError."""
    return [ipaddress.ip_network(entry, strict=False) for entry in entries]


class ForwardedFor:
    """Wraps an ASGI app: the client address and scheme as the trusted proxy saw them."""

    def __init__(self, app: Any, trusted: list[str]) -> None:
        self.app = app
        self.trusted = parse_networks(trusted)

    async def __call__(self, scope: Mapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.trusted and scope.get("client") and self._is_trusted(scope["client"][0]):
            scope = self._as_forwarded(scope)
        await self.app(scope, receive, send)

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)

    def _as_forwarded(self, scope: Mapping[str, Any]) -> dict[str, Any]:
        hops: list[str] = []
        proto = None
        for name, value in scope.get("headers", []):
            if name == b"x-forwarded-for":
                hops.extend(hop.strip() for hop in value.decode("latin-1").split(","))
            elif name == b"x-forwarded-proto":
                proto = value.decode("latin-1").strip().lower()
        client = scope["client"][0]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                try:
                    client = str(ipaddress.ip_address(hop))
                except ValueError:
                    pass  # not an address: the proxy itself stays the client
                break
        changes: dict[str, Any] = {"client": (client, 0)}
        if proto in ("http", "https"):
            changes["scheme"] = proto
        return {**scope, **changes}
