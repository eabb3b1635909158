"""Signed, expiring media URLs: fetch without the Authorization header.

An <img> or <video> tag, a reverse proxy or a CDN cannot send a bearer token. A user who
may read a media item asks for a signed URL; it carries `exp` (Unix milliseconds) and `sig`,
an HMAC-SHA256 over the media id, the variant (content or thumbnail) and `exp`, under a
32-byte key that every node of a cluster shares: it lives in the plugin's store (table
`keys`), created once by whichever node starts first (see `node.shared_secret`). Older
versions kept it in `<media dir>/signing.key`; such a file is taken over at start-up, so
URLs already issued keep working. Deleting the key's rows (and restarting) revokes every
URL issued.

Expiry times are rounded to steps of half the TTL, so a client that asks again soon gets
the same URL and its cache still hits; a URL lives between TTL/2 and TTL seconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path

KEY_BYTES = 32


def read_legacy_key(path: Path) -> bytes | None:
    """The signing key an older version kept in a file, if there is one. Sync."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        return None
    return key if len(key) == KEY_BYTES else None


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


class Signer:
    def __init__(self, key: bytes, ttl: float) -> None:
        self._key = key
        self._step = max(1, int(ttl * 1000 / 2))  # milliseconds

    def expiry(self, now: int) -> int:
        """An expiry (Unix ms) between ttl/2 and ttl after `now` (ms), stable for ttl/2."""
        return (now // self._step + 2) * self._step

    def sign(self, media_id: int, variant: str, exp: int) -> str:
        message = f"{media_id}:{variant}:{exp}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def verify(self, media_id: int, variant: str, exp: str | None, sig: str | None, now: int) -> bool:
        if not exp or not sig or not exp.isdigit() or int(exp) <= now:
            return False
        return hmac.compare_digest(self.sign(media_id, variant, int(exp)), sig)
