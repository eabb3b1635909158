"""Accounts: registration, password login, device tokens, logout, user lookup.

Passwords are hashed with argon2id in worker threads (never on the event loop). A login
returns an opaque random token; only its SHA-256 is stored, so a copy of the database
does not let anyone log in. Each token is one device; a user may hold several.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable

import argon2
import attrs
import orjson
import trio

from ..config import AccountsSection
from ..storage import Storage, WriteBatch
from ..storage.keys import from_u64, u64
from .errors import ChatError
from .ratelimit import FailureWindow
from .snowflake import SnowflakeGenerator

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.]{2,31}$")
MAX_PASSWORD_BYTES = 1024
MAX_DISPLAY_NAME = 64
NO_PASSWORD = "!"  # not an argon2 hash: no password verifies against it


@attrs.frozen
class Device:
    """What a token stands for: one logged-in device of one user."""

    user_id: int
    device_id: int
    token_hash: bytes
    name: str


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


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
        on_revoke: Callable[[bytes], None] = lambda _hash: None,
    ) -> None:
        self._storage = storage
        self._ids = ids
        self._config = config
        self._on_revoke = on_revoke
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
        self.user_failures = FailureWindow(config.login_failures_per_user, config.login_window)
        self.address_failures = FailureWindow(config.login_failures_per_address, config.login_window)

    # -- registration --------------------------------------------------------------

    async def register(self, username: object, password: object, display_name: object = None) -> dict:
        if not self._config.registration_open:
            raise ChatError("registration_closed")
        name = self._check_username(username)
        self._check_password(password)
        if display_name is not None and (not isinstance(display_name, str) or len(display_name) > MAX_DISPLAY_NAME):
            raise ChatError("bad_request", f"display_name must be a string of at most {MAX_DISPLAY_NAME} characters")
        if name in self._reserved or self._storage.get("usernames", name.encode()) is not None:
            raise ChatError("username_taken")
        self._reserved.add(name)
        try:
            async with self._hash_limiter:
                password_hash = await trio.to_thread.run_sync(self._hasher.hash, password)
            user_id = self._ids.next_id()
            record = {
                "id": str(user_id),
                "username": name,
                "display_name": (display_name or "").strip() or name,
                "created": int(time.time() * 1000),
                "password": password_hash,
                "settings": {},
            }
            batch = WriteBatch()
            batch.put("users", u64(user_id), orjson.dumps(record))
            batch.put("usernames", name.encode(), u64(user_id))
            await self._storage.write(batch)
        finally:
            self._reserved.discard(name)
        self._users[user_id] = record
        return public_user(record)

    async def create_service_user(self, username: str, display_name: str | None = None) -> dict:
        """Get or create an account for a bot or integration: it has no password, so no
        one can log in as it; plugins act for it (e.g. `node.post_message`). Works even
        when registration is closed."""
        name = self._check_username(username)
        existing = self.user_by_name(name)
        if existing is not None:
            return public_user(existing)
        if name in self._reserved:
            raise ChatError("username_taken")
        user_id = self._ids.next_id()
        record = {"id": str(user_id), "username": name, "display_name": display_name or name,
                  "created": int(time.time() * 1000), "password": NO_PASSWORD, "settings": {}, "service": True}
        batch = WriteBatch()
        batch.put("users", u64(user_id), orjson.dumps(record))
        batch.put("usernames", name.encode(), u64(user_id))
        self._reserved.add(name)
        try:
            await self._storage.write(batch)
        finally:
            self._reserved.discard(name)
        self._users[user_id] = record
        return public_user(record)

    def _check_username(self, username: object) -> str:
        if not isinstance(username, str) or not USERNAME_RE.match(username.lower()):
            raise ChatError("invalid_username")
        return username.lower()

    def _check_password(self, password: object) -> None:
        if not isinstance(password, str):
            raise ChatError("bad_request", "password must be a string")
        if len(password) < self._config.min_password_length:
            raise ChatError("weak_password")
        if len(password.encode()) > MAX_PASSWORD_BYTES:
            raise ChatError("bad_request", f"password longer than {MAX_PASSWORD_BYTES} bytes")

    # -- login / logout ------------------------------------------------------------

    async def login(self, username: object, password: object, address: str, device_name: object = None) -> dict:
        """Check a password and mint a device token. Failures are rate limited."""
        if not isinstance(username, str) or not isinstance(password, str):
            raise ChatError("bad_request", "username and password must be strings")
        if len(password.encode()) > MAX_PASSWORD_BYTES:
            raise ChatError("unauthorized")
        name = username.lower()
        wait = max(self.user_failures.blocked_for(name), self.address_failures.blocked_for(address))
        if wait > 0:
            raise ChatError("rate_limited", f"too many failed logins; retry in {int(wait) + 1} s")
        user = self.user_by_name(name)
        stored_hash = user["password"] if user and user["password"] != NO_PASSWORD else self._dummy_hash
        ok = False
        async with self._hash_limiter:
            try:
                ok = await trio.to_thread.run_sync(self._hasher.verify, stored_hash, password)
            except argon2.exceptions.VerificationError:
                ok = False
        if not ok or user is None or user["password"] == NO_PASSWORD:
            self.user_failures.fail(name)
            self.address_failures.fail(address)
            raise ChatError("unauthorized", "wrong username or password")
        self.user_failures.reset(name)
        batch = WriteBatch()
        if self._hasher.check_needs_rehash(stored_hash):
            async with self._hash_limiter:
                user = {**user, "password": await trio.to_thread.run_sync(self._hasher.hash, password)}
            batch.put("users", u64(int(user["id"])), orjson.dumps(user))
        token = "cn_" + secrets.token_urlsafe(32)
        device = Device(
            user_id=int(user["id"]),
            device_id=self._ids.next_id(),
            token_hash=hash_token(token),
            name=device_name[:64] if isinstance(device_name, str) else "",
        )
        record = {
            "user": str(device.user_id),
            "device": str(device.device_id),
            "name": device.name,
            "created": int(time.time() * 1000),
        }
        batch.put("tokens", device.token_hash, orjson.dumps(record))
        await self._storage.write(batch)
        self._users[device.user_id] = user
        self._devices[device.token_hash] = device
        return {"token": token, "device_id": str(device.device_id), "user": public_user(user)}

    async def logout(self, device: Device) -> None:
        """Revoke the device's token; its open connections are closed."""
        batch = WriteBatch()
        batch.delete("tokens", device.token_hash)
        await self._storage.write(batch)
        self._devices.pop(device.token_hash, None)
        self._on_revoke(device.token_hash)

    def authenticate(self, token: object) -> Device | None:
        """The device a token belongs to, or None. A point read, cached."""
        if not isinstance(token, str) or not token.startswith("cn_") or len(token) > 128:
            return None
        token_hash = hash_token(token)
        device = self._devices.get(token_hash)
        if device is not None:
            return device
        raw = self._storage.get("tokens", token_hash)
        if raw is None:
            return None
        record = orjson.loads(raw)
        device = Device(int(record["user"]), int(record["device"]), token_hash, record.get("name", ""))
        if len(self._devices) > 100_000:
            self._devices.clear()
        self._devices[token_hash] = device
        return device

    # -- users ---------------------------------------------------------------------

    def get_user(self, user_id: int) -> dict | None:
        user = self._users.get(user_id)
        if user is None:
            raw = self._storage.get("users", u64(user_id))
            if raw is None:
                return None
            user = self._users[user_id] = orjson.loads(raw)
        return user

    def user_by_name(self, username: str) -> dict | None:
        raw = self._storage.get("usernames", username.lower().encode())
        return None if raw is None else self.get_user(from_u64(raw))

    def search(self, prefix: str, limit: int, exclude: int | None = None) -> list[dict]:
        """Users whose username starts with `prefix`, in name order."""
        prefix = prefix.lower()
        found: list[dict] = []
        start = prefix.encode()
        with self._storage.read() as txn:
            cursor = txn.cursor(db=self._storage.handles["usernames"])
            if cursor.set_range(start):
                for key, value in cursor:
                    if not key.startswith(start) or len(found) >= limit:
                        break
                    user_id = from_u64(value)
                    if user_id != exclude and (user := self.get_user(user_id)) is not None:
                        found.append(public_user(user))
        return found

    async def update_settings(self, user_id: int, changes: dict) -> dict:
        """Merge `changes` into the user's settings (used by plugins such as receipts)."""
        old = self.get_user(user_id)
        if not old:
            raise ChatError("not_found")
        user = {**old, "settings": {**old.get("settings", {}), **changes}}
        self._users[user_id] = user  # before the await, so concurrent updates merge
        batch = WriteBatch()
        batch.put("users", u64(user_id), orjson.dumps(user))
        try:
            await self._storage.write(batch)
        except BaseException:
            self._users.pop(user_id, None)  # reload what is stored
            raise
        return user["settings"]
