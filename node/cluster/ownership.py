"""Who owns what: rendezvous (highest-random-weight) hashing over the live members.

Every key (a chat id, a user id) is owned by the live member whose hash of (member,
key) is highest. Every node computes the same answer from the same membership, with no
coordination, and when a member joins or fails only the keys it wins or held move: a
key's owner changes only if the changed member is, or becomes, its highest scorer.

Ownership is an optimisation, never what keeps data correct: two nodes with different
views of the membership may both believe they own a chat for a moment, and storage
(PostgreSQL's constraints) lets only one of them commit each seq.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

#: Namespaces keep a chat and a user with the same id from always landing together.
CHAT = b"c"
USER = b"u"
SINGLETON = b"s"  # cluster-wide jobs (the sweepers): one key, one owner


def score(member: int, key: int, namespace: bytes) -> int:
    """A member's weight for a key: 64 bits of blake2b over (namespace, member, key)."""
    digest = hashlib.blake2b(namespace + member.to_bytes(2, "big") + key.to_bytes(8, "big"), digest_size=8)
    return int.from_bytes(digest.digest(), "big")


def owner_of(key: int, members: Iterable[int], namespace: bytes = CHAT) -> int:
    """The member that owns `key` among `members` (which must not be empty)."""
    return max(members, key=lambda m: (score(m, key, namespace), m))


class Ownership:
    """The live members as one node sees them, and the owners they imply (cached per view)."""

    def __init__(self, self_id: int, members: Iterable[int] = ()) -> None:
        self.self_id = self_id
        self.members: tuple[int, ...] = ()
        self.version = 0  # bumped on every change of the view
        self._cache: dict[tuple[bytes, int], int] = {}
        self.update(members)

    def update(self, members: Iterable[int], *, include_self: bool = True) -> bool:
        """Set the live members (this node is one, unless it is leaving). Returns whether
        they changed."""
        view = tuple(sorted(set(members) | {self.self_id} if include_self else set(members) - {self.self_id}))
        if view == self.members:
            return False
        self.members = view
        self.version += 1
        self._cache.clear()
        return True

    def owner(self, key: int, namespace: bytes = CHAT) -> int:
        cached = self._cache.get((namespace, key))
        if cached is None:
            if len(self._cache) > 1_000_000:
                self._cache.clear()
            cached = self._cache[(namespace, key)] = owner_of(key, self.members, namespace)
        return cached

    def owns(self, key: int, namespace: bytes = CHAT) -> bool:
        return self.owner(key, namespace) == self.self_id
