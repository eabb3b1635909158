"""Accounts: registration, password login, device tokens, logout, user lookup, and
account management (display name, password change, listing and revoking devices).

Passwords are hashed with argon2id in worker threads (never on the event loop). A login
returns an opaque random token; only its SHA-256 is stored, so a copy of the database
does not let anyone log in. Each token is one device; a user may hold several.

A device's last use is kept in memory, noted at most once a minute, and rides along with
the next commit of anything else (a writer commit hook): it never costs a write of its own.

Tokens expire: `token_idle_timeout` seconds after their last use, and `token_max_age`
seconds after the login that made them (either 0: never). An expired token is a logged-out
device: it is deleted when next presented (or listed), its sockets are closed and the
plugins are told, as for a logout. An open socket counts as use (`note_connected`).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import argon2
import attrs
import trio

from ..config import AccountsSection
from ..storage import Storage, StorageConflict, WriteBatch
from .errors import ChatError
from .ratelimit import Attempt, LoginLimiter
from .snowflake import SnowflakeGenerator
from .text import check_name, clean_name

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.]{2,31}$")
USERNAME_PREFIX_RE = re.compile(r"^[a-z0-9_.]{0,32}$")
MAX_PASSWORD_BYTES = 1024
MAX_DISPLAY_NAME = 64
NO_PASSWORD = "!"  # not an argon2 hash: no password verifies against it
LAST_USED_EVERY_MS = 60_000  # a device's last use is noted at most this often
DELETED_NAME = "Deleted account"  # what a deleted account is shown as
LOAD_ATTEMPTS = 3  # reads of user records a concurrent change may make stale before one is cached anyway


@attrs.frozen
class Device:
    """What a token stands for: one logged-in device of one user."""

    user_id: int
    device_id: int
    token_hash: bytes
    name: str
    created: int = 0


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def now_ms() -> int:
    return int(time.time() * 1000)


def token_record(device: Device, last_used: int | None = None) -> dict:
    """What the `tokens` database holds for a device (`user` first: see `_scan_tokens`)."""
    record = {"user": str(device.user_id), "device": str(device.device_id), "name": device.name,
              "created": device.created}
    if last_used:
        record["last_used"] = last_used
    return record


def expires_at(created: int, last_used: int, idle_ms: int, max_age_ms: int) -> int | None:
    """When a token expires (Unix ms): `idle_ms` after its last use (its login if never
    used since), `max_age_ms` after its login, whichever comes first; None: never (a
    record from before logins were dated has no maximum age)."""
    ends = []
    if idle_ms:
        ends.append(max(last_used, created) + idle_ms)
    if max_age_ms and created:
        ends.append(created + max_age_ms)
    return min(ends) if ends else None


def device_from_record(token_hash: bytes, record: dict) -> Device:
    """The device a `tokens` record stands for."""
    return Device(int(record["user"]), int(record["device"]), token_hash, record.get("name", ""),
                  record.get("created", 0))


def check_display_name(value: object) -> str:
    """One rule for registration and renames, so a name accepted once is accepted again:
    NFC, no control, format, invisible or bidi characters (node/core/text.py). Returns the
    stripped name; empty means "use the username"."""
    return check_name(value, "display_name", MAX_DISPLAY_NAME, empty=True)


def valid_username(value: object) -> str | None:
    """The stored form of a username (ASCII lower case), or None if `value` is not one.

    Only ASCII folds: ``str.lower`` would turn the Kelvin sign (U+212A) into "k" or a
    dotted capital I into "i", letting a look-alike name stand for another; anything
    outside a-z, A-Z, 0-9, _ and . is refused instead (docs/protocol.md)."""
    if not isinstance(value, str) or not value.isascii():
        return None
    name = value.lower()
    return name if USERNAME_RE.match(name) else None


def public_user(record: dict) -> dict:
    """The fields of a user anyone may see."""
    return {
        "id": record["id"],
        "username": record["username"],
        "display_name": record.get("display_name") or record["username"],
        "created": record["created"],
    }


class Accounts:
    def __init__(
        self,
        storage: Storage,
        ids: SnowflakeGenerator,
        config: AccountsSection,
        *,
        on_revoke: Callable[[Device], None] = lambda _device: None,
    ) -> None:
        self._storage = storage
        self._ids = ids
        self._config = config
        self._on_revoke = on_revoke
        #: Called with a user id after their record changed (other nodes drop their copy).
        self.on_change: Callable[[int], None] = lambda _user_id: None
        self.shared_storage = False  # other nodes write the same storage (a cluster)
        self._hasher = argon2.PasswordHasher(
            time_cost=config.argon2_time_cost,
            memory_cost=config.argon2_memory_kib,
            parallelism=config.argon2_parallelism,
            type=argon2.Type.ID,
        )
        # Verifying against this for unknown users keeps login time the same either way.
        self._dummy_hash = self._hasher.hash(secrets.token_hex(16))
        self._hash_limiter = trio.CapacityLimiter(2)
        self._reserved: set[str] = set()
        self._devices: dict[bytes, Device] = {}
        self._users: dict[int, dict] = {}
        self._forgotten = 0  # cached records dropped so far (see load_users)
        self._last_used: dict[bytes, int] = {}  # token hash -> Unix ms, noted by authenticate
        self._touched: set[bytes] = set()  # last_used changed since the last commit
        self._revoking: set[bytes] = set()  # deletes in flight: never write these back
        self._revocations = 0  # revocations finished so far (see authenticate)
        self._password_changes: dict[int, int] = {}  # user id -> changes since start (see login)
        self._idle_ms = int(config.token_idle_timeout * 1000)
        self._max_age_ms = int(config.token_max_age * 1000)
        # last uses are noted often enough that an idle expiry never catches a device in use
        self._note_every_ms = min(LAST_USED_EVERY_MS, self._idle_ms // 4) if self._idle_ms else LAST_USED_EVERY_MS
        storage.add_commit_hook(self._flush_last_used)
        self.login_limits = LoginLimiter(
            delay_after=config.login_delay_after, delay=config.login_delay, max_delay=config.login_max_delay,
            per_user=config.login_failures_per_user, per_address=config.login_failures_per_address,
            window=config.login_window,
        )

    # -- registration --------------------------------------------------------------

    async def register(
        self, username: object, password: object, display_name: object = None,
        *, gate: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> dict:
        """Create an account. `gate(username, display_name)` runs once the input is valid
        and before anything is hashed or stored (plugins' ``check_registration``)."""
        if not self._config.registration_open:
            raise ChatError("registration_closed")
        name = self._check_username(username)
        password = self._check_password(password)
        display_name = "" if display_name is None else check_display_name(display_name)
        if name in self._reserved or await self._storage.user_id_by_name(name) is not None:
            raise ChatError("username_taken")
        if gate is not None:
            await gate(name, display_name or name)
            if name in self._reserved:
                raise ChatError("username_taken")
        self._reserved.add(name)
        try:
            async with self._hash_limiter:
                password_hash = await trio.to_thread.run_sync(self._hasher.hash, password)
            user_id = self._ids.next_id()
            record = {
                "id": str(user_id),
                "username": name,
                "display_name": display_name or name,
                "created": int(time.time() * 1000),
                "password": password_hash,
                "settings": {},
            }
            await self._store_new_user(user_id, record)
        finally:
            self._reserved.discard(name)
        self._users[user_id] = record
        return public_user(record)

    async def _store_new_user(self, user_id: int, record: dict) -> None:
        batch = WriteBatch()
        batch.put_user(user_id, record)
        batch.add_username(record["username"], user_id)
        try:
            await self._storage.write(batch)
        except StorageConflict:  # taken meanwhile (another node, in a cluster)
            raise ChatError("username_taken") from None

    async def create_service_user(self, username: str, display_name: str | None = None) -> dict:
        """Get or create an account for a bot or integration: it has no password, so no
        one can log in as it; plugins act for it (e.g. `node.post_message`). Works even
        when registration is closed."""
        name = self._check_username(username)
        existing = await self.user_by_name(name)
        if existing is not None:
            return public_user(existing)
        if name in self._reserved:
            raise ChatError("username_taken")
        user_id = self._ids.next_id()
        record = {"id": str(user_id), "username": name, "display_name": display_name or name,
                  "created": int(time.time() * 1000), "password": NO_PASSWORD, "settings": {}, "service": True}
        self._reserved.add(name)
        try:
            await self._store_new_user(user_id, record)
        finally:
            self._reserved.discard(name)
        self._users[user_id] = record
        return public_user(record)

    def _check_username(self, username: object) -> str:
        name = valid_username(username)
        if name is None:
            raise ChatError("invalid_username")
        return name

    def _check_password(self, password: object) -> str:
        """The password, if it is one the node accepts."""
        if not isinstance(password, str):
            raise ChatError("bad_request", "password must be a string")
        if len(password) < self._config.min_password_length:
            raise ChatError("weak_password")
        if len(password.encode()) > MAX_PASSWORD_BYTES:
            raise ChatError("bad_request", f"password longer than {MAX_PASSWORD_BYTES} bytes")
        return password

    # -- login / logout ------------------------------------------------------------

    async def login(self, username: object, password: object, address: str, device_name: object = None) -> dict:
        """Check a password and mint a device token. Attempts are rate limited, and
        counted before the password is hashed (see `LoginLimiter`)."""
        if not isinstance(username, str) or not isinstance(password, str):
            raise ChatError("bad_request", "username and password must be strings")
        name = valid_username(username)  # None: no one can have it (still counted per address)
        attempt = self._begin_attempt(name, address)
        user = await self.user_by_name(name) if name is not None else None
        changes = self._password_changes.get(int(user["id"]), 0) if user else 0
        stored_hash = user["password"] if user and user["password"] != NO_PASSWORD else self._dummy_hash
        ok = len(password.encode()) <= MAX_PASSWORD_BYTES and await self._verify(stored_hash, password)
        if not ok or user is None or user["password"] == NO_PASSWORD:
            raise ChatError("unauthorized", "wrong username or password")
        if user.get("disabled"):  # told only to whoever knows the password
            raise ChatError("account_disabled")
        self.login_limits.succeeded(attempt)
        user_id = int(user["id"])
        batch = WriteBatch()
        new_hash = stored_hash
        if self._hasher.check_needs_rehash(stored_hash):
            new_hash = await self._hash(password)
        self._check_password_unchanged(user_id, changes)
        if new_hash != stored_hash:  # unless the password changed meanwhile (on another node): see below
            self._stage(batch, user_id, await self.user(user_id) or user, {"password": new_hash},
                        expect={"password": stored_hash})
        token = "cn_" + secrets.token_urlsafe(32)
        device = Device(
            user_id=user_id,
            device_id=self._ids.next_id(),
            token_hash=hash_token(token),
            name=clean_name(device_name, 64),
            created=now_ms(),
        )
        batch.put_token(device.token_hash, token_record(device))
        try:
            await self._storage.write(batch)
        finally:
            if new_hash != stored_hash:
                self._forget_user(user_id)
        stored = (await self._storage.get_users((user_id,))).get(user_id) if self.shared_storage else None
        if self._password_changes.get(user_id, 0) != changes or (
                stored and (stored["password"] != new_hash or stored.get("disabled"))):
            # The password changed (or an admin disabled the account) while this token was on
            # its way to disk (here, or on another node sharing the storage), and the change's
            # scan may have missed it: a token minted with the old password must not survive.
            await self._revoke([device])
            raise ChatError("unauthorized", "the password was changed; log in again")
        self._devices[device.token_hash] = device
        return {"token": token, "device_id": str(device.device_id), "user": public_user(await self._stored_user(user_id))}

    async def logout(self, device: Device) -> None:
        """Revoke the device's token; its open connections are closed."""
        await self._revoke([device])

    def _begin_attempt(self, username: str | None, address: str) -> Attempt:
        """Count a password check before it runs (no await in between, so concurrent
        guesses see each other), or refuse it with `rate_limited`."""
        attempt = self.login_limits.begin(username, address)
        if not isinstance(attempt, Attempt):
            wait = int(attempt) + 1
            raise ChatError("rate_limited", f"too many failed password attempts; retry in {wait} s", retry_after=wait)
        return attempt

    async def _verify(self, stored_hash: str, password: str) -> bool:
        """argon2 verification in a worker thread (it takes tens of milliseconds)."""
        async with self._hash_limiter:
            try:
                return await trio.to_thread.run_sync(self._hasher.verify, stored_hash, password)
            except argon2.exceptions.VerificationError:
                return False

    async def _hash(self, password: str) -> str:
        async with self._hash_limiter:
            return await trio.to_thread.run_sync(self._hasher.hash, password)

    def _check_password_unchanged(self, user_id: int, changes: int) -> None:
        """A password checked before a password change (that landed meanwhile) is stale."""
        if self._password_changes.get(user_id, 0) != changes:
            raise ChatError("unauthorized", "the password was changed; log in again")

    async def _revoke(self, devices: list[Device], batch: WriteBatch | None = None) -> None:
        """Delete the devices' tokens (with whatever else `batch` holds), then report each
        device to `on_revoke` (which closes its connections and tells the plugins).

        Shielded: the writer commits a queued request even if its caller is cancelled, so
        the caller waits for the outcome and the sockets are closed either way. Nothing is
        reported unless the commit succeeded."""
        hashes = [device.token_hash for device in devices]
        batch = batch or WriteBatch()
        for token_hash in hashes:
            batch.delete_token(token_hash)
            self._revoking.add(token_hash)
            self._touched.discard(token_hash)
        try:
            with trio.CancelScope(shield=True):
                await self._storage.write(batch)
        finally:
            for token_hash in hashes:
                self._devices.pop(token_hash, None)  # always safe: a miss re-reads storage
                self._last_used.pop(token_hash, None)
            self._revoking.difference_update(hashes)
            self._revocations += 1
        for device in devices:
            self._on_revoke(device)

    async def authenticate(self, token: object) -> Device | None:
        """The device a token belongs to, or None. A point read, cached."""
        if not isinstance(token, str) or not token.startswith("cn_") or len(token) > 128:
            return None
        token_hash = hash_token(token)
        device = self._devices.get(token_hash)
        if device is None:
            while True:  # a revocation that finished during the read makes the read stale
                epoch = self._revocations
                record = await self._storage.get_token(token_hash)
                if epoch == self._revocations:
                    break
            if record is None or token_hash in self._revoking:
                return None
            device = device_from_record(token_hash, record)
            if len(self._devices) > 100_000:
                self._devices.clear()
                self._last_used.clear()
            self._devices[token_hash] = device
            self._last_used[token_hash] = record.get("last_used", 0)
        if self._expired(device):
            if not self.shared_storage or await self._still_expired(device):
                await self._revoke([device])  # a logout: its sockets close, the plugins are told
                return None
        self._note_use(token_hash)
        return device

    def expires(self, device: Device) -> int | None:
        """When the device's token expires (Unix ms), as far as this node knows; None: never."""
        return expires_at(device.created, self._last_used.get(device.token_hash, 0), self._idle_ms, self._max_age_ms)

    def _expired(self, device: Device) -> bool:
        expires = self.expires(device)
        return expires is not None and expires <= now_ms()

    async def _still_expired(self, device: Device) -> bool:
        """Another node may have seen the device in use since this one cached it: its
        stored last use decides."""
        record = await self._storage.get_token(device.token_hash)
        if record is None:
            return True
        self._last_used[device.token_hash] = max(self._last_used.get(device.token_hash, 0),
                                                 record.get("last_used", 0))
        return self._expired(device)

    def _note_use(self, token_hash: bytes) -> None:
        """Remember that a device was used, at most once a minute (or a quarter of the idle
        timeout; see `_flush_last_used`)."""
        now = now_ms()
        if now - self._last_used.get(token_hash, 0) >= self._note_every_ms and token_hash not in self._revoking:
            self._last_used[token_hash] = now
            self._touched.add(token_hash)

    async def note_connected(self, devices: Iterable[Device]) -> None:
        """These devices have sockets open: that is use. Those past their maximum age are
        logged out (their sockets close with 4003)."""
        expired = []
        for device in devices:
            if device.token_hash not in self._devices:
                continue  # revoked meanwhile
            if self._max_age_ms and device.created and device.created + self._max_age_ms <= now_ms():
                expired.append(device)
            else:
                self._note_use(device.token_hash)
        if expired:
            await self._revoke(expired)

    @property
    def connected_check_interval(self) -> float:
        """Seconds between `note_connected` calls (a quarter of either timeout, at most a minute)."""
        spans = [ms / 4000 for ms in (self._idle_ms, self._max_age_ms) if ms]
        return max(0.05, min([LAST_USED_EVERY_MS / 1000, *spans]))

    async def _live_tokens(self, user_id: int, *, revoke: bool = True) -> list[tuple[bytes, dict]]:
        """(token hash, record) of a user's devices; expired ones are left out (and, with
        `revoke`, logged out here: an admin's listing, perhaps offline, writes nothing)."""
        live: list[tuple[bytes, dict]] = []
        expired: list[tuple[bytes, dict]] = []
        now = now_ms()
        for token_hash, record in await self._tokens_of(user_id):
            ends = self._expiry_of(token_hash, record)
            (expired if ends is not None and ends <= now else live).append((token_hash, record))
        if expired and revoke:
            await self._revoke([device_from_record(h, r) for h, r in expired])
        return live

    def _expiry_of(self, token_hash: bytes, record: dict) -> int | None:
        last_used = max(record.get("last_used", 0), self._last_used.get(token_hash, 0))
        return expires_at(record.get("created", 0), last_used, self._idle_ms, self._max_age_ms)

    def _flush_last_used(self) -> WriteBatch:
        """Writer commit hook: noted last uses join whatever commits next, so keeping them
        costs no write of its own. Revoked or revoking devices are never written back."""
        batch = WriteBatch()
        for token_hash in self._touched:
            device = self._devices.get(token_hash)
            if device is not None and token_hash not in self._revoking:
                batch.put_token(token_hash, token_record(device, self._last_used.get(token_hash)))
        self._touched.clear()
        return batch

    # -- account management ----------------------------------------------------------

    async def rename(self, user_id: int, display_name: object) -> dict:
        """Change the display name (registration's rule; empty means the username)."""
        name = check_display_name(display_name)
        user = await self.user(user_id)
        if user is None:
            raise ChatError("not_found")
        return public_user(await self._update_user(user_id, {"display_name": name or user["username"]}))

    async def set_photo(self, user_id: int, media_id: str | None) -> dict:
        """Set (None: remove) the profile photo, a media id (node/core/profiles.py checks it);
        returns the stored record."""
        if media_id is None:
            old = await self.user(user_id)
            if old is None:
                raise ChatError("not_found")
            if "photo" not in old:
                return old
            return await self._update_user(user_id, drop=("photo",))
        return await self._update_user(user_id, {"photo": media_id})

    async def change_password(self, device: Device, current: object, new: object, address: str) -> int:
        """Replace the password after checking the current one, and log out every other
        device of the user. Wrong guesses count toward the login limits, so a stolen token
        is no way around them. Returns how many devices were logged out."""
        if not isinstance(current, str) or not isinstance(new, str):
            raise ChatError("bad_request", "current_password and new_password must be strings")
        self._check_password(new)
        user = await self.user(device.user_id)
        if user is None:
            raise ChatError("unauthorized")
        attempt = self._begin_attempt(user["username"], address)
        changes = self._password_changes.get(device.user_id, 0)
        stored = user["password"]
        if stored == NO_PASSWORD or len(current.encode()) > MAX_PASSWORD_BYTES or not await self._verify(stored, current):
            raise ChatError("wrong_password")
        self.login_limits.succeeded(attempt)
        new_hash = await self._hash(new)
        if self._password_changes.get(device.user_id, 0) != changes:
            raise ChatError("conflict", "the password was changed meanwhile")
        return await self._replace_password(device, new_hash)

    async def _replace_password(self, device: Device, new_hash: str) -> int:
        """Store the new hash and delete the other tokens in one commit. The change is
        counted before the scan, so a login racing this either sees the count move and
        fails, or committed its token before the scan and is found by it (see `login`)."""
        user_id = device.user_id
        self._password_changes[user_id] = self._password_changes.get(user_id, 0) + 1
        batch = WriteBatch()
        old = await self.user(user_id)
        if old is None:
            raise ChatError("unauthorized")
        self._stage(batch, user_id, old, {"password": new_hash})
        try:
            others = [device_from_record(h, r) for h, r in await self._tokens_of(user_id) if h != device.token_hash]
            await self._revoke(others, batch)
        finally:
            self._forget_user(user_id)
        self.on_change(user_id)
        return len(others)

    async def devices(self, device: Device) -> list[dict]:
        """The user's logged-in devices: the caller's first, then the most recently used."""
        out = []
        for token_hash, record in await self._live_tokens(device.user_id):
            last_used = max(record.get("last_used", 0), self._last_used.get(token_hash, 0)) or None
            out.append({"device_id": record["device"], "name": record.get("name", ""),
                        "created": record.get("created"), "last_used": last_used,
                        "expires": self._expiry_of(token_hash, record), "current": token_hash == device.token_hash})
        out.sort(key=lambda d: (d["current"], d["last_used"] or d["created"] or 0), reverse=True)
        return out

    async def revoke_device(self, device: Device, device_id: int) -> None:
        """Log out one of the user's devices (the caller's own: a logout). Another user's
        device, or an unknown id, is `not_found`."""
        for token_hash, record in await self._tokens_of(device.user_id):
            if record["device"] == str(device_id):
                await self._revoke([device_from_record(token_hash, record)])
                return
        raise ChatError("not_found", "no such device")

    async def _tokens_of(self, user_id: int) -> list[tuple[bytes, dict]]:
        """(token hash, record) of every device of a user."""
        return await self._storage.tokens_of(user_id)

    # -- users ---------------------------------------------------------------------

    def forget_users(self, user_ids: Iterable[int]) -> None:
        """Another node changed these users: read them again when next asked."""
        for user_id in user_ids:
            self._forget_user(user_id)

    def _forget_user(self, user_id: int) -> None:
        """Drop a cached record; a read that was under way meanwhile is done again before
        anything is cached (see `load_users`)."""
        self._users.pop(user_id, None)
        self._forgotten += 1

    def forget_device(self, token_hash: bytes) -> None:
        """Another node revoked this token: never answer from the cache for it again."""
        self._devices.pop(token_hash, None)
        self._last_used.pop(token_hash, None)
        self._touched.discard(token_hash)
        self._revocations += 1

    def peek_user(self, user_id: int) -> dict | None:
        """A user's record if it is cached (after `user` or `load_users`), else None."""
        return self._users.get(user_id)

    async def user(self, user_id: int) -> dict | None:
        """A user's record (cached after the first read), or None if there is no such user."""
        user = self._users.get(user_id)
        if user is None:
            user = (await self.load_users((user_id,))).get(user_id)
        return user

    async def load_users(self, user_ids: Iterable[int]) -> dict[int, dict]:
        """The records of those users that exist (one engine call for what is not cached)."""
        out = {}
        missing = []
        for user_id in user_ids:
            user = self._users.get(user_id)
            if user is None:
                missing.append(user_id)
            else:
                out[user_id] = user
        for _attempt in range(LOAD_ATTEMPTS):
            if not missing:
                break
            forgotten = self._forgotten
            found = await self._storage.get_users(missing)
            if self._forgotten != forgotten and _attempt < LOAD_ATTEMPTS - 1:
                # A record changed while this read was under way (here, or on another node,
                # whose news just arrived): what was read may predate the change. Read again
                # rather than cache it, or the stale copy would stay until the next change.
                continue
            for user_id, record in found.items():
                out[user_id] = self._users.setdefault(user_id, record)
            break
        return out

    async def user_by_name(self, username: object) -> dict | None:
        """The user of that name; None for no such user and for anything that is not a
        valid username (empty, too long, other characters), which no one can have."""
        name = valid_username(username)
        if name is None:
            return None
        user_id = await self._storage.user_id_by_name(name)
        return None if user_id is None else await self.user(user_id)

    async def search(self, prefix: str, limit: int, exclude: int | None = None) -> list[dict]:
        """Users whose username starts with `prefix`, in name order (only ASCII case
        folds; a prefix no username can start with finds no one)."""
        if not prefix.isascii() or not USERNAME_PREFIX_RE.match(prefix.lower()):
            return []
        found = await self._storage.search_usernames(prefix.lower(), limit + 1)
        users = await self.load_users([uid for _, uid in found if uid != exclude])
        return [public_user(users[uid]) for _, uid in found if uid in users][:limit]

    async def update_settings(self, user_id: int, changes: dict) -> dict:
        """Merge `changes` into the user's settings (used by plugins such as receipts)."""
        old = await self.user(user_id)
        if not old:
            raise ChatError("not_found")
        user = await self._update_user(user_id, settings=changes)
        return user["settings"]

    async def _update_user(self, user_id: int, fields: dict[str, Any] | None = None, *, drop: tuple[str, ...] = (),
                           settings: dict[str, Any] | None = None) -> dict:
        """Change some fields of a user record (see `_stage`); returns the record as this
        node knows it."""
        old = await self.user(user_id)
        if not old:
            raise ChatError("not_found")
        batch = WriteBatch()
        user = self._stage(batch, user_id, old, fields, drop=drop, settings=settings)
        try:
            await self._storage.write(batch)
        finally:
            self._forget_user(user_id)
        self.on_change(user_id)
        return user

    def _stage(self, batch: WriteBatch, user_id: int, old: dict, fields: dict[str, Any] | None = None, *,
               drop: tuple[str, ...] = (), settings: dict[str, Any] | None = None,
               expect: dict[str, Any] | None = None) -> dict:
        """Add a change of some fields to `batch`, and show it in the cache at once. Storage
        applies it to the stored record (`update_user`), not to this node's copy: in a
        cluster another node may change other fields of the same user at the same moment,
        and both changes must stay. The caller drops the cached copy once the batch is
        written (`_forget_user`), so it is read again as stored."""
        record = {k: v for k, v in old.items() if k not in drop}
        record.update(fields or {})
        if settings:
            record["settings"] = {**old.get("settings", {}), **settings}
        self._users[user_id] = record
        batch.update_user(user_id, fields or {}, drop=drop, settings=settings, expect=expect)
        return record

    # -- administration (node/core/admin.py, docs/admin.md) -------------------------------

    async def create_account(self, username: object, password: object, display_name: object = None) -> dict:
        """An account made by an admin: registration's rules for the name and password,
        whether or not registration is open, and no plugin gate."""
        name = self._check_username(username)
        password = self._check_password(password)
        display_name = "" if display_name is None else check_display_name(display_name)
        if name in self._reserved or await self._storage.user_id_by_name(name) is not None:
            raise ChatError("username_taken")
        self._reserved.add(name)
        try:
            password_hash = await self._hash(password)
            user_id = self._ids.next_id()
            record = {"id": str(user_id), "username": name, "display_name": display_name or name,
                      "created": now_ms(), "password": password_hash, "settings": {}}
            await self._store_new_user(user_id, record)
        finally:
            self._reserved.discard(name)
        self._users[user_id] = record
        return record

    async def devices_of(self, user_id: int) -> list[dict]:
        """A user's logged-in devices, the most recently used first (for admins)."""
        out = []
        for token_hash, record in await self._live_tokens(user_id, revoke=False):
            last_used = max(record.get("last_used", 0), self._last_used.get(token_hash, 0)) or None
            out.append({"device_id": record["device"], "name": record.get("name", ""),
                        "created": record.get("created"), "last_used": last_used,
                        "expires": self._expiry_of(token_hash, record)})
        out.sort(key=lambda d: d["last_used"] or d["created"] or 0, reverse=True)
        return out

    async def revoke_devices(self, user_id: int, device_ids: Iterable[int] | None = None) -> int:
        """Log out some (None: all) of a user's devices; an id that is not theirs is
        `not_found` and nothing is revoked. Returns how many were logged out."""
        if device_ids is None:
            return await self._revoke_all(user_id, WriteBatch())
        wanted = {str(d) for d in device_ids}
        devices = [device_from_record(h, r) for h, r in await self._tokens_of(user_id) if r["device"] in wanted]
        if len(devices) != len(wanted):
            raise ChatError("not_found", "no such device")
        await self._revoke(devices)
        return len(devices)

    async def set_disabled(self, user_id: int, disabled: bool) -> tuple[dict, int]:
        """Disable an account (every device is logged out; logging in is refused with
        `account_disabled`) or enable it again. Returns the record and how many devices
        were logged out."""
        user = await self._live_user(user_id)
        if disabled:
            fields = {} if user.get("disabled") else {"disabled": now_ms()}
            return await self._replace_record(user_id, user, fields, revoke=True)
        return await self._replace_record(user_id, user, drop=("disabled",), revoke=False)

    async def set_password(self, user_id: int, password: object) -> int:
        """Set a new password for a user (an admin's reset) and log out every device.
        Returns how many were logged out."""
        password = self._check_password(password)
        user = await self._live_user(user_id)
        new_hash = await self._hash(password)
        _record, revoked = await self._replace_record(user_id, await self._live_user(user_id), {"password": new_hash},
                                                      revoke=True)
        self.login_limits.forget_user(user["username"])
        return revoked

    async def delete_account(self, user_id: int) -> tuple[dict, int]:
        """Replace the account with a tombstone: no password, no username (the name is
        free again), no settings or photo, shown as "Deleted account"; every device is
        logged out. Returns the tombstone and how many devices were logged out."""
        user = await self._live_user(user_id)
        tombstone = {"id": user["id"], "username": f"deleted-{user['id']}", "display_name": DELETED_NAME,
                     "created": user["created"], "password": NO_PASSWORD, "settings": {}, "deleted": now_ms()}
        batch = WriteBatch()
        batch.remove_username(user["username"])
        self._users[user_id] = tombstone
        batch.put_user(user_id, tombstone)  # the whole record: nothing of the account may stay
        return tombstone, await self._commit_user(user_id, revoke=True, batch=batch)

    async def _stored_user(self, user_id: int) -> dict:
        """The record of a user known to exist (records are never removed, only marked
        deleted), as one that authenticated or logs in."""
        user = await self.user(user_id)
        if user is None:
            raise ChatError("unauthorized")
        return user

    async def _live_user(self, user_id: int) -> dict:
        user = await self.user(user_id)
        if user is None or user.get("deleted"):
            raise ChatError("not_found", "no such user")
        return user

    async def _replace_record(self, user_id: int, old: dict, fields: dict[str, Any] | None = None, *,
                              drop: tuple[str, ...] = (), revoke: bool) -> tuple[dict, int]:
        """Change some fields of a user record (see `_stage`) and, with `revoke`, delete
        every token of the user in the same commit. Returns the record as this node knows
        it, and how many devices were logged out."""
        batch = WriteBatch()
        record = self._stage(batch, user_id, old, fields, drop=drop)
        return record, await self._commit_user(user_id, revoke=revoke, batch=batch)

    async def _commit_user(self, user_id: int, *, revoke: bool, batch: WriteBatch) -> int:
        """Write a batch that changes a user record and, with `revoke`, delete every token
        of the user in the same commit. Counted as a credential change, so a login racing
        it fails (see `login`). Returns how many devices were logged out."""
        if revoke:
            self._password_changes[user_id] = self._password_changes.get(user_id, 0) + 1
        try:
            if revoke:
                revoked = await self._revoke_all(user_id, batch)
            else:
                await self._storage.write(batch)
                revoked = 0
        finally:
            self._forget_user(user_id)  # read again as stored
        self.on_change(user_id)
        return revoked

    async def _revoke_all(self, user_id: int, batch: WriteBatch) -> int:
        """Delete every token of a user along with `batch`. Tokens are scanned again after
        the commit: a login on another node that read the record before this commit has
        written its token by then, and goes too."""
        devices = [device_from_record(h, r) for h, r in await self._tokens_of(user_id)]
        await self._revoke(devices, batch)
        late = [device_from_record(h, r) for h, r in await self._tokens_of(user_id)]
        if late:
            await self._revoke(late)
        return len(devices) + len(late)
