"""Where things happen: which node sequences a chat, where a user's devices are.

A single node does everything itself (`Routing`). In a cluster (`ClusterRouting`, in
node/core/cluster_routing.py) every chat is sequenced by one owner, chosen by rendezvous
hashing over the live members, and every user has a *home* node, chosen the same way,
that knows which nodes hold the user's devices. The core asks this object, never the
cluster directly:

- `owns(chat_id)`: sequence it here, or forward the operation to its owner;
- `fan_out_remote(...)`: a stored entry for the devices of members on other nodes;
- `send_to_users(...)`: an ephemeral event for users' devices wherever they are;
- `user_connected`/`user_disconnected`: a user's first/last device on this node;
- `is_online`, `invalidate`, `revoke`: presence, caches, logouts across the cluster.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .hub import Hub
    from .services import PluginHooks
    from .state import ChatState


class Routing:
    """One node: every chat is sequenced here, every device is connected here."""

    clustered = False

    def __init__(self, node_id: int, hub: Hub, plugins: PluginHooks) -> None:
        self.node_id = node_id
        self.hub = hub
        self.plugins = plugins

    # -- chats -----------------------------------------------------------------------

    @property
    def version(self) -> int:
        """Changes whenever ownership may have moved."""
        return 0

    def owns(self, chat_id: int) -> bool:
        return True

    def owner(self, chat_id: int) -> int:
        return self.node_id

    def runs_singletons(self) -> bool:
        """Whether cluster-wide jobs (the sweepers) run on this node."""
        return True

    async def forward(self, op: Any) -> Any:  # pragma: no cover - never called on one node
        raise AssertionError("a single node forwards nothing")

    def forward_nowait(self, op: Any) -> None:  # pragma: no cover - never called on one node
        raise AssertionError("a single node forwards nothing")

    def fan_out_remote(self, chat: ChatState, seq: int, event: bytes, exclude: Any) -> set[int]:
        """Offer a stored entry to members' devices on other nodes; returns the members
        reached there (none on one node)."""
        return set()

    def given_up(self, chats: list[tuple[int, int]]) -> None:
        """This node stopped sequencing these chats, stored up to these seqs (chat id, seq)."""

    def members_changed(self, chat_id: int, user_ids: Iterable[int]) -> None:
        """Who is in a chat changed: other nodes drop what they cached about these users' chats."""

    # -- users -----------------------------------------------------------------------

    def send_to_users(self, user_ids: Iterable[int], payload: bytes) -> None:
        """An ephemeral event to every connected device of the users (never waits)."""
        for user_id in user_ids:
            for session in self.hub.sessions_of(user_id):
                session.send_event(payload)

    def user_connected(self, user_id: int) -> None:
        """The first device of a user connected to this node."""
        self.plugins.notify("on_user_online", user_id=user_id)

    def user_disconnected(self, user_id: int) -> None:
        """The last device of a user on this node is gone."""
        self.plugins.notify("on_user_offline", user_id=user_id)

    async def is_online(self, user_id: int) -> bool:
        """Whether the user has a device connected anywhere in the cluster."""
        return self.hub.is_online(user_id)

    def invalidate(self, kind: str, ids: Iterable[int]) -> None:
        """Cached state changed (``user``, ``blocks``): other nodes drop their copies."""

    def revoke(self, token_hash: bytes) -> None:
        """A token was deleted: close its connections, wherever they are."""
        self.hub.revoke(token_hash)

    def statistics(self) -> dict[str, Any]:
        return {}
