"""In-memory rate limiters: a token bucket for frames, a failure window for logins."""

from __future__ import annotations

import time
from collections import OrderedDict, deque


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up. One per connection."""

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, clock=time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._stamp = clock()

    def take(self, n: float = 1.0) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False


class FailureWindow:
    """Counts failures per key in a sliding window; bounded to `max_keys` keys (LRU)."""

    def __init__(self, limit: int, window: float, *, max_keys: int = 100_000, clock=time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str) -> deque[float] | None:
        stamps = self._failures.get(key)
        if stamps is None:
            return None
        horizon = self._clock() - self.window
        while stamps and stamps[0] <= horizon:
            stamps.popleft()
        if not stamps:
            del self._failures[key]
            return None
        return stamps

    def blocked_for(self, key: str) -> float:
        """Seconds until `key` may try again; 0 if it may try now."""
        stamps = self._recent(key)
        if stamps is None or len(stamps) < self.limit:
            return 0.0
        return max(0.0, stamps[0] + self.window - self._clock())

    def fail(self, key: str) -> None:
        stamps = self._recent(key)
        if stamps is None:
            stamps = self._failures[key] = deque(maxlen=self.limit)
            if len(self._failures) > self._max_keys:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(key)
        stamps.append(self._clock())

    def reset(self, key: str) -> None:
        self._failures.pop(key, None)
