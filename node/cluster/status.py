"""The cluster as one node sees it: `GET /api/admin/cluster/members`, `chatnode cluster
members` and the cluster part of `chatnode admin stats` (docs/admin.md, "The cluster").

The node answers from its membership table and asks every live peer over the cluster
links (``stat?``, node/core/cluster_routing.py) for what only the peer knows: the chats it
holds sequencer state for, its devices, its own links. The questions go out at once and
are awaited for at most a timeout, so a peer that does not answer (stopped, partitioned,
overloaded) is shown as such and never holds the answer up. The answer's round trip goes
through both links' queues, so it shows the lag to that peer, not only the network's.

How many chats each member *should* own is counted here, from every chat id in storage
and this node's view of the live members (rendezvous hashing, node/cluster/ownership.py),
so it costs a read of the chats table: a few seconds per million chats.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import trio

from .ownership import CHAT, owner_of

if TYPE_CHECKING:
    from ..app import Node
    from ..storage.api import Storage

DEFAULT_TIMEOUT = 2.0  # seconds to wait for the peers' answers
MAX_TIMEOUT = 30.0
PAGE = 2000  # chat ids read (and hashed, in a worker thread) at a time
LIVE = ("alive", "suspect")


async def cluster_view(node: Node, *, timeout: float = DEFAULT_TIMEOUT, expected: bool = True) -> dict[str, Any]:
    """The membership table (`ClusterService.describe`), each member completed with its
    own figures and this node's link to it; `expected` adds the chats each should own."""
    assert node.cluster is not None
    routing: Any = node.routing
    view = node.cluster.describe()
    me = view["node_id"]
    asked = [m["node_id"] for m in view["members"] if m["state"] in LIVE and m["node_id"] != me]
    answers: dict[int, tuple[Any, float] | None] = {}
    owners: dict[str, Any] = {}
    members = tuple(routing.ownership.members)

    async def ask(peer: int) -> None:
        answers[peer] = await routing.ask(peer, lambda req: ("stat?", req), timeout)

    async def count() -> None:
        owners.update(await expected_owners(node.storage, members))

    async with trio.open_nursery() as nursery:
        for peer in asked:
            nursery.start_soon(ask, peer)
        if expected:
            nursery.start_soon(count)
    for member in view["members"]:
        node_id = member["node_id"]
        if node_id == me:
            reply, report, rtt = "self", routing.report(), None
        elif node_id not in answers:
            reply, report, rtt = "not asked", None, None
        elif answers[node_id] is None:
            reply, report, rtt = "no answer", None, None
        else:
            report, seconds = answers[node_id]  # type: ignore[misc]
            reply, rtt = "answered", round(seconds * 1000, 3)
        member.update(_figures(report))
        member["reply"] = reply
        member["rtt_ms"] = rtt
        member["link"] = routing.links.peer_statistics(node_id) if node_id != me else None
        if expected:
            member["chats_expected"] = owners["by_member"].get(node_id, 0)
    view["ownership"] = {"members": list(members), "chats": owners.get("total")}
    return view


def _figures(report: dict[str, Any] | None) -> dict[str, Any]:
    keys = ("chats_sequenced", "devices", "users_online", "subscribed_chats", "users_homed", "pending_requests",
            "view", "leaving", "links")
    return {key: (report or {}).get(key) for key in keys}


async def expected_owners(storage: Storage, members: tuple[int, ...]) -> dict[str, Any]:
    """Every stored chat's owner among `members`: ``{"total", "by_member": {id: count}}``."""
    by_member: Counter[int] = Counter({m: 0 for m in members})
    total = 0
    async for rows in storage.export("chats", PAGE):
        ids = [row[0] for row in rows]
        total += len(ids)
        if members:
            by_member.update(await trio.to_thread.run_sync(_owners, ids, members))
    return {"total": total, "by_member": dict(by_member)}


def _owners(chat_ids: list[int], members: tuple[int, ...]) -> Counter[int]:
    return Counter(owner_of(chat_id, members, CHAT) for chat_id in chat_ids)
