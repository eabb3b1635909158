"""The ``[cluster]`` section of config.toml: gossip membership settings.

Defaults follow HashiCorp memberlist's LAN profile (probe every 1 s with a 500 ms
timeout, 3 indirect checks, suspicion multiplier 4, gossip to 3 nodes every 200 ms,
push-pull every 30 s). Durations are in seconds. Every value is checked here, so a
bad cluster setting stops start-up with a message naming the key.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from typing import Any

import attrs

KEY_SIZES = (16, 24, 32)  # AES-128/192/256-GCM


def _in_range(lo: float | None = None, hi: float | None = None):
    def check(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError(f"{attribute.name}: must be between {lo} and {hi}, got {value!r}")

    return check


def _int(default: int, lo: int, hi: int) -> Any:
    return attrs.field(default=default, validator=_in_range(lo, hi))


def _float(default: float, lo: float, hi: float) -> Any:
    return attrs.field(default=default, validator=_in_range(lo, hi))


def split_host_port(address: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` → (host, port); raises ValueError."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """True for loopback IP literals and ``localhost``; a name is never trusted to be local."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def decode_key(text: str) -> bytes:
    """A base64 cluster key → 16, 24 or 32 raw bytes; raises ValueError."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("keys: each key must be base64 (make one with `chatnode cluster keygen`)") from None
    if len(raw) not in KEY_SIZES:
        raise ValueError(f"keys: a key must decode to 16, 24 or 32 bytes, got {len(raw)}")
    return raw


def _check_seeds(_instance: Any, _attribute: attrs.Attribute, value: list[str]) -> None:
    for seed in value:
        try:
            split_host_port(seed)
        except ValueError:
            raise ValueError(f"seeds: {seed!r} is not host:port") from None


def _check_keys(_instance: Any, _attribute: attrs.Attribute, value: list[str]) -> None:
    for key in value:
        decode_key(key)
    if len(set(value)) != len(value):
        raise ValueError("keys: the same key is listed twice")


@attrs.frozen
class ClusterConfig:
    """Gossip membership settings; the cluster is off unless enabled."""

    enabled: bool = False
    bind_host: str = "127.0.0.1"  # UDP (gossip) and TCP (state exchanges, links) share this address ...
    bind_port: int = _int(7946, 0, 65535)  # ... and port; 0 picks a free one
    advertise_host: str = ""  # the address other members use; default bind_host
    advertise_port: int = _int(0, 0, 65535)  # default: the bound port
    seeds: list[str] = attrs.field(factory=list, validator=_check_seeds)  # "host:port" of members to join
    # base64 AES keys; the first encrypts, all decrypt (rotate by adding, then promoting, then removing)
    keys: list[str] = attrs.field(factory=list, validator=_check_keys)

    probe_interval: float = _float(1.0, 0.01, 60.0)  # one member probed per interval
    probe_timeout: float = _float(0.5, 0.005, 60.0)  # wait for a direct ack before asking others
    indirect_checks: int = _int(3, 0, 16)  # members asked to ping-req a silent target
    suspicion_mult: int = _int(4, 1, 100)  # suspicion timeout = mult * max(1, log10(n)) * probe_interval
    suspicion_max_timeout_mult: int = _int(6, 1, 100)  # a lone suspicion starts at this many times the minimum
    awareness_max_multiplier: int = _int(8, 1, 64)  # local health: timeouts scale up to this factor
    gossip_interval: float = _float(0.2, 0.005, 60.0)
    gossip_nodes: int = _int(3, 1, 64)  # fanout: members gossiped to per interval
    gossip_to_the_dead: float = _float(30.0, 0.0, 86_400.0)  # keep gossiping to a failed member this long
    retransmit_mult: int = _int(4, 1, 100)  # each update is sent mult * ceil(log10(n + 1)) times
    push_pull_interval: float = _float(30.0, 0.0, 86_400.0)  # full state exchange; 0 turns it off
    reconnect_interval: float = _float(30.0, 0.0, 86_400.0)  # exchange with a failed member or absent seed; 0: never
    dead_member_timeout: float = _float(3600.0, 1.0, 30 * 86_400.0)  # failed/left members listed this long
    stream_timeout: float = _float(10.0, 0.1, 600.0)  # one state exchange over TCP; a connection's first frame
    join_retry_interval: float = _float(5.0, 0.1, 3600.0)  # retry seeds while no member is reachable
    leave_timeout: float = _float(2.0, 0.0, 60.0)  # a polite stop's hand-over, then its spreading of the news
    max_packet_bytes: int = _int(1400, 512, 65_000)  # UDP payload, encryption included
    max_stream_bytes: int = _int(8 * 1024 * 1024, 65_536, 1 << 30)  # one frame on TCP: a state exchange, a link batch

    def __attrs_post_init__(self) -> None:
        if self.probe_timeout >= self.probe_interval:
            raise ValueError("probe_timeout: must be shorter than probe_interval")
        if not self.keys and not is_loopback(self.bind_host):
            raise ValueError(
                "bind_host: binding a cluster to a non-loopback address needs [cluster] keys "
                "(without a key the cluster stays on loopback)"
            )
        if self.advertise_host and not self.keys and not is_loopback(self.advertise_host):
            raise ValueError("advertise_host: a non-loopback address needs [cluster] keys")

    @property
    def raw_keys(self) -> list[bytes]:
        return [decode_key(k) for k in self.keys]
