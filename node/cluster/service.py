"""Wiring membership into a running node: sockets, keys, join, leave, admin view.

``serve_cluster`` is started by ``serve_node`` in its core nursery when
``[cluster] enabled = true``. It binds UDP and TCP, joins the seeds, reports a
``ClusterService`` (stored as ``node.cluster``) and then runs until the node's
shutdown is requested, when it leaves gracefully so the others record *left*
rather than *failed*.

Start-up fails with ``ClusterStartError`` and one clear message when the node id is
already used by a live member, or the bind is not allowed (no key off loopback).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from ..config import listen_error
from .config import ClusterConfig, is_loopback
from .demux import DemuxTransport
from .keyring import Keyring
from .links import Links
from .membership import EventListener, JoinRefused, MemberEvent, Membership
from .transport import Transport, TrioClock, UdpTcpTransport

if TYPE_CHECKING:
    from ..app import Node

log = logging.getLogger(__name__)

URL_POLL_INTERVAL = 0.05  # seconds, while waiting for the HTTP listener to report its port


class ClusterStartError(Exception):
    """The cluster cannot start; the message tells the operator what to change."""


class ClusterService:
    """The running membership of this node, and its links to the other members."""

    def __init__(self, membership: Membership, transport: UdpTcpTransport, links: Links | None = None,
                 demux: DemuxTransport | None = None) -> None:
        self.membership = membership
        self.transport = transport
        self.links = links
        self.demux = demux

    def live_addresses(self) -> dict[int, str]:
        """Node id -> cluster address of every live member, this node included."""
        return {m.node: m.address for m in self.membership.live_members()}

    def http_urls(self) -> list[str]:
        """The HTTP URLs of the live members (clients fail over between them)."""
        return [m.http_url for m in self.membership.live_members() if m.http_url]

    @property
    def address(self) -> str:
        return self.membership.address

    def add_listener(self, listener: EventListener, *, replay: bool = False) -> None:
        """Call ``listener(MemberEvent)`` on every membership change; it must not block.

        The initial join happens before the service is handed out, so its ``joined``
        events have already fired; with ``replay=True`` the listener first gets one
        ``joined`` event for every member that is live now.
        """
        if replay:
            now = self.membership.clock.now()
            for member in self.membership.live_members():
                if member.node != self.membership.node_id:
                    listener(MemberEvent("joined", member, now))
        self.membership.add_listener(listener)

    def statistics(self) -> dict[str, object]:
        """Membership's counters; streams evicted or dropped before their first frame
        (by the demultiplexer, in front of membership) count with membership's own."""
        stats: dict[str, Any] = {**self.membership.statistics(), "send_errors": self.transport.send_errors}
        if self.demux is not None:
            stats["streams_evicted"] += self.demux.evicted
            stats["streams_dropped"] += self.demux.dropped
        return stats

    def follow(self, on_change: Callable[[dict[int, str]], None]) -> None:
        """Call ``on_change(live_addresses)`` now and after every membership change."""
        on_change(self.live_addresses())
        self.membership.add_listener(lambda _event: on_change(self.live_addresses()))

    def describe(self) -> dict[str, Any]:
        """The admin view: this node, every member with its age in its state, and counters."""
        now = self.membership.clock.now()
        members = [
            {
                "node_id": m.node,
                "name": m.name,
                "state": m.state,
                "incarnation": m.incarnation,
                "address": m.address,
                "http_url": m.http_url,
                "protocol": m.protocol,
                "age_seconds": round(max(0.0, now - m.since), 3),
                "self": m.node == self.membership.node_id,
            }
            for m in self.membership.members()
        ]
        return {
            "enabled": True,
            "node_id": self.membership.node_id,
            "address": self.address,
            "encrypted": self.membership.keyring.encrypted,
            "members": members,
            "statistics": self.statistics(),
        }


def _check_bind(cfg: ClusterConfig, keyring: Keyring) -> None:
    if not keyring.encrypted and not is_loopback(cfg.bind_host):
        raise ClusterStartError(f"refusing to bind the cluster to {cfg.bind_host} without [cluster] keys")
    try:
        unspecified = ipaddress.ip_address(cfg.bind_host).is_unspecified
    except ValueError:
        unspecified = False
    if unspecified and not cfg.advertise_host:
        raise ClusterStartError(f"bind_host {cfg.bind_host} needs [cluster] advertise_host: the address others reach")


def _configured_http_url(node: Node) -> str:
    """The URL known before the listener starts: "" when the port is 0 (announced later)."""
    http = node.config.http
    if http.public_url:
        return http.public_url.rstrip("/")
    if not http.port:
        return ""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(http.host, http.host)
    return f"http://[{host}]:{http.port}" if ":" in host else f"http://{host}:{http.port}"


async def _announce_http_url(node: Node, membership: Membership) -> None:
    """The HTTP listener starts after the cluster; publish its URL once it is known."""
    while not node.http_port:  # noqa: ASYNC110 (set by the HTTP server's start, which has no event)
        await trio.sleep(URL_POLL_INTERVAL)
    membership.update_http_url(_configured_http_url(node) or node.http_url)


async def serve_cluster(node: Node, *, task_status: trio.TaskStatus[ClusterService] = trio.TASK_STATUS_IGNORED) -> None:
    """Run this node's cluster membership until the node shuts down, then leave.

    Raises:
        ClusterStartError: before reporting started, when this node must not join.

    Cancellation: cancelling stops at once without the goodbye; the others will then
    detect a failure instead of a departure.
    """
    cfg = node.config.cluster
    keyring = Keyring(cfg.raw_keys)
    _check_bind(cfg, keyring)
    if not keyring.encrypted:
        log.warning("cluster: no [cluster] keys set: packets are not authenticated, so the cluster stays on loopback")
    try:
        transport = await UdpTcpTransport.open(
            cfg.bind_host, cfg.bind_port, cfg.advertise_host, cfg.advertise_port, cfg.max_packet_bytes
        )
    except OSError as exc:
        raise listen_error("cluster", cfg.bind_host, cfg.bind_port, exc) from None
    refused: JoinRefused | None = None
    from ..core.cluster_routing import ClusterRouting

    routing = node.routing
    assert isinstance(routing, ClusterRouting), "a node with [cluster] enabled routes with ClusterRouting (app._routing)"
    links = Links(node.config.node.id, keyring, transport, routing.on_message,
                  on_restart=routing.peer_restarted, on_interrupted=routing.link_interrupted,
                  max_frame=cfg.max_stream_bytes)
    demux = DemuxTransport(transport, links, first_frame_timeout=cfg.stream_timeout, max_frame=cfg.max_stream_bytes)
    try:
        membership = _membership(node, cfg, demux, keyring)
        async with trio.open_nursery() as nursery:
            await nursery.start(links.serve)
            routing.attach(links, node.chats, node.accounts, node.blocks)
            await nursery.start(routing.serve)
            await nursery.start(membership.run)
            seeds = [s for s in cfg.seeds if s not in (transport.address, transport.bound)]
            try:
                answered = await membership.join(seeds) if seeds else 0
            except JoinRefused as exc:
                refused = exc
                nursery.cancel_scope.cancel()
            else:
                if seeds and not answered:
                    log.warning(
                        "cluster: no seed answered (%s); retrying every %.0f s",
                        ", ".join(seeds),
                        cfg.join_retry_interval,
                    )
                    nursery.start_soon(_keep_joining, membership, seeds)
                nursery.start_soon(_announce_http_url, node, membership)
                service = ClusterService(membership, transport, links, demux)
                service.follow(routing.members_now)
                task_status.started(service)
                log.info(
                    "cluster: node %d on %s (%s), %d live member(s)",
                    membership.node_id, transport.address, "encrypted" if keyring.encrypted else "unencrypted",
                    len(membership.live_members()),
                )  # fmt: skip
                await node.shutdown_requested.wait()
                # A polite stop hands over: own nothing (what still arrives is passed on),
                # then keep the links up until this node's sequencer has finished, every
                # peer has seen the `bye`, and every answer owed to or by it has gone out.
                routing.leave()
                with trio.move_on_after(node.config.http.graceful_timeout + 1):
                    await node.sequencer_done.wait()
                with trio.move_on_after(cfg.leave_timeout) as handover:
                    await routing.wait_settled()
                if handover.cancelled_caught:
                    log.warning("cluster: the hand-over did not settle within %.1f s", cfg.leave_timeout)
                with trio.move_on_after(cfg.leave_timeout + 1):
                    await membership.leave()
                log.info("cluster: left the cluster")
                nursery.cancel_scope.cancel()
    finally:
        transport.close()
    if refused is not None:
        raise ClusterStartError(str(refused))


def _membership(node: Node, cfg: ClusterConfig, transport: Transport, keyring: Keyring) -> Membership:
    try:
        return Membership(
            cfg,
            node_id=node.config.node.id,
            name=node.config.node.name,
            http_url=_configured_http_url(node),
            transport=transport,
            clock=TrioClock(),
            keyring=keyring,
        )
    except ValueError as exc:
        raise ClusterStartError(str(exc)) from None


async def _keep_joining(membership: Membership, seeds: list[str]) -> None:
    try:
        await membership.join_until_joined(seeds)
    except JoinRefused as exc:
        # Two nodes must never mint the same Snowflake ids: stop this node.
        raise ClusterStartError(str(exc)) from None
