"""In-memory rate limiters: a token bucket for frames, failure windows and growing
delays for password checks."""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque

import attrs


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


class UserBuckets:
    """A token bucket per key (a user), on this node: `rate` per second, `burst` saved up.
    A key's bucket outlives its connections (reconnecting refills nothing); at most
    `max_keys` are kept, the least recently used dropped first."""

    def __init__(self, rate: float, burst: int, *, max_keys: int = 100_000, clock=time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[int, list[float]] = OrderedDict()  # key -> [tokens, stamp]

    def take(self, key: int, n: float = 1.0) -> bool:
        now = self._clock()
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = [self.burst, now]
        else:
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        self._buckets[key] = bucket
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        if bucket[0] >= n:
            bucket[0] -= n
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

    def fail(self, key: str) -> float:
        """Count a failure now; returns its stamp (for `forget`)."""
        stamps = self._recent(key)
        if stamps is None:
            stamps = self._failures[key] = deque(maxlen=self.limit)
            if len(self._failures) > self._max_keys:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(key)
        stamp = self._clock()
        stamps.append(stamp)
        return stamp

    def forget(self, key: str, stamp: float) -> None:
        """Take back one failure counted by `fail` (it turned out not to be one)."""
        stamps = self._failures.get(key)
        if stamps is not None:
            try:
                stamps.remove(stamp)
            except ValueError:
                pass
            if not stamps:
                del self._failures[key]

    def reset(self, key: str) -> None:
        self._failures.pop(key, None)


def address_key(address: str) -> str:
    """What limits count per address: the IPv4 address, or the IPv6 /64 (whoever has one
    address there has 2^64 of them); anything else as given."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@attrs.define(eq=False)
class Attempt:
    """A password check under way, counted as a failure until it is known to be right."""

    user: str | None
    address: str
    address_stamp: float
    user_stamp: float | None


class LoginLimiter:
    """Limits on password checks (logins and password changes), all counted *before* the
    password is hashed, so concurrent guesses cannot slip past the count:

    - per user and address: `delay_after` failures are free, then each further attempt
      from that address for that user waits `delay` seconds after the last failure,
      doubling up to `max_delay` (forgotten after `max_delay` + `window` of quiet, and
      at the first success). Whoever guesses slows down only themselves.
    - per address: `per_address` failures per `window` (whatever the usernames).
    - per user: `per_user` failures per `window` from addresses the user has not logged in
      from (lately, on this node); past it, such addresses wait until the window passes.
      This stops many addresses guessing one password together, while the owner still
      logs in from an address they used before: no one can lock them out of it.
    """

    KNOWN_PER_USER = 8  # addresses remembered per user

    def __init__(self, *, delay_after: int, delay: float, max_delay: float, per_user: int, per_address: int,
                 window: float, max_keys: int = 100_000, clock=time.monotonic) -> None:
        self.delay_after = delay_after
        self.delay = delay
        self.max_delay = max_delay
        self.window = window
        self._clock = clock
        self._max_keys = max_keys
        self.users = FailureWindow(per_user, window, max_keys=max_keys, clock=clock)
        self.addresses = FailureWindow(per_address, window, max_keys=max_keys, clock=clock)
        self._pairs: OrderedDict[tuple[str, str], list[float]] = OrderedDict()  # -> [failures, last failure]
        self._known: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()  # user -> addresses

    def wait(self, user: str | None, address: str) -> float:
        """Seconds before a password check for `user` from `address` may run (0: now)."""
        key = address_key(address)
        waits = [self.addresses.blocked_for(key)]
        if user is not None:
            waits.append(self._pair_wait(user, key))
            if not self.known(user, key):
                waits.append(self.users.blocked_for(user))
        return max(waits)

    def begin(self, user: str | None, address: str) -> Attempt | float:
        """Count an attempt as a failure now (synchronously), or return the seconds to
        wait if it may not run yet. `succeeded` takes the count back."""
        wait = self.wait(user, address)
        if wait > 0:
            return wait
        key = address_key(address)
        attempt = Attempt(user, key, self.addresses.fail(key), None)
        if user is not None:
            pair = self._pair(user, key)
            pair[0] += 1
            pair[1] = self._clock()
            if not self.known(user, key):
                attempt.user_stamp = self.users.fail(user)
        return attempt

    def succeeded(self, attempt: Attempt) -> None:
        """The password was right: nothing of this attempt counts, the user's failures
        from this address are forgotten, and the address is one the user logs in from."""
        self.addresses.forget(attempt.address, attempt.address_stamp)
        if attempt.user is None:
            return
        if attempt.user_stamp is not None:
            self.users.forget(attempt.user, attempt.user_stamp)
        self._pairs.pop((attempt.user, attempt.address), None)
        known = self._known.pop(attempt.user, None) or OrderedDict()
        known.pop(attempt.address, None)
        known[attempt.address] = None
        while len(known) > self.KNOWN_PER_USER:
            known.popitem(last=False)
        self._known[attempt.user] = known
        while len(self._known) > self._max_keys:
            self._known.popitem(last=False)

    def forget_user(self, user: str) -> None:
        """An admin reset the user's password: their failures (from every address) no
        longer count."""
        self.users.reset(user)
        for pair in [p for p in self._pairs if p[0] == user]:
            del self._pairs[pair]

    def known(self, user: str, address: str) -> bool:
        """Whether `user` logged in from `address` (its key) lately."""
        known = self._known.get(user)
        return known is not None and address in known

    def _pair(self, user: str, key: str) -> list[float]:
        pair = self._pairs.get((user, key))
        if pair is None or self._clock() - pair[1] > self.max_delay + self.window:
            pair = self._pairs[(user, key)] = [0, 0.0]
            while len(self._pairs) > self._max_keys:
                self._pairs.popitem(last=False)
        else:
            self._pairs.move_to_end((user, key))
        return pair

    def _pair_wait(self, user: str, key: str) -> float:
        pair = self._pairs.get((user, key))
        if pair is None:
            return 0.0
        failures, last = pair
        now = self._clock()
        if now - last > self.max_delay + self.window:
            return 0.0
        if failures < self.delay_after:
            return 0.0
        delay = min(self.max_delay, self.delay * 2 ** min(64, failures - self.delay_after))
        return max(0.0, last + delay - now)
