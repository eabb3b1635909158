"""The member table: who is in the cluster, at which incarnation, in which state.

This module is pure bookkeeping (no I/O, no clock of its own), so the merge rules of
SWIM can be read and tested in one place:

* A member's own incarnation number orders what is said about it. ``Alive`` at a
  higher incarnation overrides anything older; ``Suspect`` and ``Dead`` apply only at
  the member's current incarnation or above.
* Only the member itself raises its incarnation: told that it is suspected or dead,
  it refutes with a higher one. A graceful leave is a ``Dead`` sent by the member
  about itself and is recorded as *left*, never as *failed*.
* An incarnation rises one step per refutation or update, so news that puts a known
  member more than ``MAX_INCARNATION_JUMP`` above what is known of it is not news but
  a forgery, and is ignored. Otherwise one packet from a key holder, ``Suspect`` at the
  top incarnation, would leave the member no higher number to refute with: it would
  stay failed for good. The local incarnation saturates at ``MAX_INCARNATION``.
* Suspicion (Lifeguard): the timeout starts long and shrinks towards its minimum as
  independent members confirm it, so one confused node cannot kill a healthy one. A
  suspicion read in another member's table (a state exchange) names no accuser: it may
  open a suspicion here, but it never counts as a confirmation.
* Node ids are unique: an ``Alive`` that claims a live member's id from another
  address is a conflict and is ignored (the joiner is refused, see membership).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import attrs

from .messages import ALIVE, DEAD, LEFT, MAX_INCARNATION, SUSPECT, Alive, Dead, MemberState, Suspect

#: The most a member's incarnation may rise in one message about it (see the module docstring).
MAX_INCARNATION_JUMP = 1 << 16

# event kinds handed to listeners
JOINED, UPDATED, RECOVERED, SUSPECTED, FAILED, LEFT_KIND = "joined", "updated", "recovered", "suspect", "failed", "left"


@attrs.define(slots=True, eq=False)
class Member:
    node: int
    name: str
    address: str
    http_url: str
    protocol: int
    incarnation: int
    state: str
    since: float  # clock time of the last state change
    suspicion: Suspicion | None = None

    def alive_message(self) -> Alive:
        return Alive(self.node, self.incarnation, self.name, self.address, self.http_url, self.protocol)

    def row(self) -> MemberState:
        return MemberState(
            self.node, self.incarnation, self.state, self.name, self.address, self.http_url, self.protocol
        )


@attrs.frozen(slots=True)
class MemberInfo:
    """An immutable snapshot of a member, as handed to event listeners and the admin API."""

    node: int
    name: str
    address: str
    http_url: str
    protocol: int
    incarnation: int
    state: str
    since: float

    @classmethod
    def of(cls, m: Member) -> MemberInfo:
        return cls(m.node, m.name, m.address, m.http_url, m.protocol, m.incarnation, m.state, m.since)


def suspicion_bounds(mult: int, max_mult: int, members: int, probe_interval: float) -> tuple[float, float]:
    """(min, max) suspicion timeout: ``mult * max(1, log10(n)) * probe_interval`` and ``max_mult`` times that."""
    scale = max(1.0, math.log10(max(1, members)))
    low = mult * scale * probe_interval
    return low, low * max_mult


class Suspicion:
    """A running suspicion whose deadline moves closer with each independent confirmation.

    With ``k`` expected confirmations, after ``c`` of them the timeout is
    ``max - (max - min) * log(c + 1) / log(k + 1)``, never below ``min``.

    ``source`` is the accuser, or None when the suspicion was read in another member's
    table: then the first accuser heard of later is its origin, not a confirmation.
    """

    def __init__(self, source: int | None, k: int, low: float, high: float, started: float) -> None:
        self.k = k
        self.low = low
        self.high = high if k >= 1 else low
        self.started = started
        self.sources: set[int] = set() if source is None else {source}
        self.confirmations = 0

    def confirm(self, source: int) -> bool:
        """Count ``source`` once; True if it was new (worth passing on)."""
        if source in self.sources:
            return False
        if not self.sources:  # opened second-hand: this is the accuser, the deadline stays
            self.sources.add(source)
            return True
        if self.confirmations >= self.k:
            return False
        self.sources.add(source)
        self.confirmations += 1
        return True

    @property
    def deadline(self) -> float:
        if self.k < 1:
            return self.started + self.low
        frac = math.log(self.confirmations + 1) / math.log(self.k + 1)
        timeout = max(self.low, self.high - frac * (self.high - self.low))
        return self.started + timeout


@attrs.frozen(slots=True)
class Change:
    """What applying one message did. ``kind`` is an event kind or None (nothing to tell)."""

    kind: str | None = None
    member: Member | None = None
    rebroadcast: bool = False  # pass the message on
    refute: bool = False  # it was about us: announce a higher incarnation
    reannounce: bool = False  # stale doubt about us: repeat our current announcement
    conflict: Member | None = None  # an Alive claimed this live member's node id from elsewhere


NOTHING = Change()


class MemberTable:
    """Members by node id, the local node included."""

    def __init__(self, local: Member) -> None:
        self.local = local
        self._members: dict[int, Member] = {local.node: local}

    def __iter__(self) -> Iterator[Member]:
        return iter(self._members.values())

    def __len__(self) -> int:
        return len(self._members)

    def get(self, node: int) -> Member | None:
        return self._members.get(node)

    def live_count(self) -> int:
        """Members believed to be running (alive or suspect), the local node included."""
        return sum(1 for m in self._members.values() if m.state in (ALIVE, SUSPECT))

    def remove(self, node: int) -> None:
        if node != self.local.node:
            self._members.pop(node, None)

    # -- merge rules ---------------------------------------------------------------

    def _implausible(self, node: int, incarnation: int) -> bool:
        """Whether ``incarnation`` is further above the known one than a member can climb."""
        m = self._members.get(node)
        return m is not None and incarnation > m.incarnation + MAX_INCARNATION_JUMP

    def apply_alive(self, msg: Alive, now: float) -> Change:
        m = self._members.get(msg.node)
        if self._implausible(msg.node, msg.incarnation):
            return NOTHING
        if msg.node == self.local.node:
            local = self.local
            if msg.incarnation < local.incarnation:
                return NOTHING
            same = (msg.address, msg.http_url, msg.name) == (local.address, local.http_url, local.name)
            if msg.incarnation == local.incarnation and same:
                return NOTHING  # our own announcement coming back
            if msg.address != local.address and msg.incarnation >= local.incarnation:
                # someone else claims our id; refuting keeps our claim, membership reports the conflict
                return Change(
                    refute=True,
                    conflict=Member(
                        msg.node, msg.name, msg.address, msg.http_url, msg.protocol, msg.incarnation, ALIVE, now
                    ),
                )
            return Change(refute=True)  # a former life of ours at a higher incarnation
        if m is None:
            m = Member(msg.node, msg.name, msg.address, msg.http_url, msg.protocol, msg.incarnation, ALIVE, now)
            self._members[msg.node] = m
            return Change(JOINED, m, rebroadcast=True)
        if msg.address != m.address:
            if m.state in (ALIVE, SUSPECT):
                return Change(conflict=m)
            # a dead or departed id comes back from a new address: it may be reclaimed
        elif msg.incarnation <= m.incarnation:
            return NOTHING
        was = m.state
        meta_changed = (msg.name, msg.address, msg.http_url, msg.protocol) != (
            m.name,
            m.address,
            m.http_url,
            m.protocol,
        )
        m.name, m.address, m.http_url, m.protocol = msg.name, msg.address, msg.http_url, msg.protocol
        m.incarnation = msg.incarnation
        m.suspicion = None
        if was != ALIVE:
            m.state, m.since = ALIVE, now
        if was in (DEAD, LEFT):
            kind: str | None = JOINED
        elif was == SUSPECT:
            kind = UPDATED if meta_changed else RECOVERED
        else:
            kind = UPDATED if meta_changed else None
        return Change(kind, m, rebroadcast=True)

    def apply_suspect(
        self, msg: Suspect, now: float, bounds: tuple[float, float], k: int, *, hearsay: bool = False
    ) -> Change:
        """Apply a suspicion. ``hearsay``: it was read in another member's table, so
        ``msg.source`` is only who passed it on; it opens a suspicion (not passed on)
        but never confirms one."""
        m = self._members.get(msg.node)
        if self._implausible(msg.node, msg.incarnation):
            return NOTHING
        if m is self.local and m.state == ALIVE:
            # our refutation may not have reached the doubter yet: say it again
            return Change(refute=True) if msg.incarnation >= m.incarnation else Change(reannounce=True)
        if m is None or m is self.local or msg.incarnation < m.incarnation or m.state in (DEAD, LEFT):
            return NOTHING
        if m.state == SUSPECT and m.suspicion is not None and msg.incarnation == m.incarnation:
            if not hearsay and m.suspicion.confirm(msg.source):
                return Change(None, m, rebroadcast=True)  # a new accuser: pass it on
            return NOTHING
        m.incarnation = msg.incarnation
        m.state, m.since = SUSPECT, now
        m.suspicion = Suspicion(None if hearsay else msg.source, k, bounds[0], bounds[1], now)
        return Change(SUSPECTED, m, rebroadcast=not hearsay)

    def apply_dead(self, msg: Dead, now: float) -> Change:
        m = self._members.get(msg.node)
        if self._implausible(msg.node, msg.incarnation):
            return NOTHING
        if m is self.local and m.state == ALIVE:
            return Change(refute=True) if msg.incarnation >= m.incarnation else Change(reannounce=True)
        if m is None or m is self.local or msg.incarnation < m.incarnation or m.state in (DEAD, LEFT):
            return NOTHING
        m.incarnation = msg.incarnation
        m.suspicion = None
        if msg.source == msg.node:
            m.state, m.since = LEFT, now
            return Change(LEFT_KIND, m, rebroadcast=True)
        m.state, m.since = DEAD, now
        return Change(FAILED, m, rebroadcast=True)

    def refute(self, seen: int) -> Alive:
        """Raise the local incarnation above ``seen`` and return the announcement."""
        self.local.incarnation = min(MAX_INCARNATION, max(self.local.incarnation, seen) + 1)
        return self.local.alive_message()
