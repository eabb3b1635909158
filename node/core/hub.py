"""The hub: which devices of which users are connected to this node right now."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .errors import CLOSE_LOGGED_OUT, ChatError

if TYPE_CHECKING:
    from .session import Session

EMPTY: tuple = ()


class Hub:
    def __init__(self, max_connections_per_user: int) -> None:
        self._max_per_user = max_connections_per_user
        self._by_user: dict[int, list[Session]] = {}
        self._flushes: list[Session] | None = None  # sessions to flush when the batch ends
        # Edge callbacks: first device of a user connected / last one gone.
        self.on_user_online: list[Callable[[int], None]] = []
        self.on_user_offline: list[Callable[[int], None]] = []

    def attach(self, session: Session) -> None:
        """Register a connected, authenticated session; raises ChatError at the per-user limit."""
        sessions = self._by_user.setdefault(session.user_id, [])
        if len(sessions) >= self._max_per_user:
            if not sessions:
                del self._by_user[session.user_id]
            raise ChatError("too_many_connections", f"at most {self._max_per_user} connections per user")
        sessions.append(session)
        if len(sessions) == 1:
            for callback in self.on_user_online:
                callback(session.user_id)

    def detach(self, session: Session) -> None:
        sessions = self._by_user.get(session.user_id)
        if not sessions or session not in sessions:
            return
        sessions.remove(session)
        if not sessions:
            del self._by_user[session.user_id]
            for callback in self.on_user_offline:
                callback(session.user_id)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Events queued meanwhile (a sequencer batch's effects) are written once per
        session when it ends: one write per device per batch, and no writer task woken
        when the socket takes it at once."""
        outer = self._flushes is not None
        if not outer:
            self._flushes = []
        try:
            yield
        finally:
            if not outer:
                sessions, self._flushes = self._flushes or [], None
                for session in sessions:
                    session.flush_now()

    def defer_flush(self, session: Session) -> bool:
        """Inside `batch`: note `session` for the flush at its end (True)."""
        if self._flushes is None:
            return False
        self._flushes.append(session)
        return True

    def sessions_of(self, user_id: int) -> list[Session] | tuple:
        return self._by_user.get(user_id, EMPTY)

    def is_online(self, user_id: int) -> bool:
        return user_id in self._by_user

    def all_sessions(self) -> list[Session]:
        return [s for sessions in self._by_user.values() for s in sessions]

    def revoke(self, token_hash: bytes) -> None:
        """Close every connection authenticated with a token that was just revoked."""
        for session in self.all_sessions():
            if session.device is not None and session.device.token_hash == token_hash:
                session.close(CLOSE_LOGGED_OUT, "logged out")

    def statistics(self) -> dict[str, int]:
        return {"users_online": len(self._by_user), "connections": sum(map(len, self._by_user.values()))}
