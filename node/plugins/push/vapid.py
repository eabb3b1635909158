"""VAPID (RFC 8292): the node's identity towards Web Push services.

A browser subscribes with the node's public key (`applicationServerKey`); a push service
then accepts messages for that subscription only with a JWT signed by the matching
private key. Every node of a cluster must sign with the same key (a browser subscribed
through one node is notified by whichever node stores the message), so the P-256 key
pair lives in the plugin's store (table `keys`, PKCS#8 PEM), created once by the first
node that starts (`node.shared_secret`). Older versions kept it in
`<data dir>/push/vapid_private.pem`; such a file is taken over at start-up, so existing
subscriptions keep working. Replacing the key orphans every browser subscription, so
back it up with the database.

The JWT is ES256 (ECDSA P-256 with SHA-256; the signature is r || s, 64 bytes) over
`{"aud": <origin of the push endpoint>, "exp": <now + 12 h>, "sub": <contact>}`, all by
`cryptography`. Tokens are cached per audience and reused while more than an hour is left.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import trio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

TOKEN_LIFETIME = 12 * 3600  # seconds; RFC 8292 allows at most 24 hours
TOKEN_REUSE_MARGIN = 3600  # a cached token is reused while it has this much life left


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))




def load_key(pem: bytes, where: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError(f"{where} is not a P-256 private key")
    return key


def new_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def read_legacy_pem(path: Path) -> bytes | None:
    """The key file of an older version, if there is one (checked). Sync."""
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        return None
    load_key(pem, str(path))
    return pem


KEY_WAIT = 30.0  # seconds a request or a send waits for the key of a cluster's first start


class Vapid:
    """The node's VAPID identity. The key may come a moment after start-up (the first
    start of a cluster settles it with the others): `ready()` waits for it."""

    def __init__(self, key: ec.EllipticCurvePrivateKey | None, subject: str) -> None:
        self.subject = subject
        self._tokens: dict[str, tuple[int, str]] = {}
        self._ready = trio.Event()
        self.public_key = ""
        if key is not None:
            self.set_key(key)

    def set_key(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        self.public_key = b64url(raw)  # what browsers pass to pushManager.subscribe()
        self._ready.set()

    async def ready(self) -> bool:
        """Wait (at most KEY_WAIT) for the key; whether it is there."""
        with trio.move_on_after(KEY_WAIT):
            await self._ready.wait()
        return self._ready.is_set()

    def authorization(self, endpoint: str, now: float | None = None) -> str:
        """The `Authorization` header value for a request to `endpoint` (RFC 8292 section 3)."""
        return f"vapid t={self.token(audience_of(endpoint), now)}, k={self.public_key}"

    def token(self, audience: str, now: float | None = None) -> str:
        now = int(time.time() if now is None else now)
        cached = self._tokens.get(audience)
        if cached is not None and cached[0] - now > TOKEN_REUSE_MARGIN:
            return cached[1]
        exp = now + TOKEN_LIFETIME
        header = b64url(orjson.dumps({"typ": "JWT", "alg": "ES256"}))
        claims = b64url(orjson.dumps({"aud": audience, "exp": exp, "sub": self.subject}))
        signing_input = f"{header}.{claims}".encode()
        r, s = decode_dss_signature(self._key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        token = f"{header}.{claims}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
        if len(self._tokens) > 1000:
            self._tokens.clear()
        self._tokens[audience] = (exp, token)
        return token


def audience_of(endpoint: str) -> str:
    """The origin of a push endpoint: the JWT's `aud`."""
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"
