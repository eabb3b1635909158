"""VAPID (RFC 8292): the node's identity towards Web Push services.

A browser subscribes with the node's public key (`applicationServerKey`); a push service
then accepts messages for that subscription only with a JWT signed by the matching
private key. The P-256 key pair is generated on the node's first start and kept in
`<data dir>/push/vapid_private.pem` (mode 0600): replacing it orphans every browser
subscription, so back it up with the database.

The JWT is ES256 (ECDSA P-256 with SHA-256; the signature is r || s, 64 bytes) over
`{"aud": <origin of the push endpoint>, "exp": <now + 12 h>, "sub": <contact>}`, all by
`cryptography`. Tokens are cached per audience and reused while more than an hour is left.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

TOKEN_LIFETIME = 12 * 3600  # seconds; RFC 8292 allows at most 24 hours
TOKEN_REUSE_MARGIN = 3600  # a cached token is reused while it has this much life left


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The VAPID private key at `path`, generated (0600) if missing. Sync: call in a thread."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError(f"{path} is not a P-256 private key")
        return key
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return key


class Vapid:
    def __init__(self, key: ec.EllipticCurvePrivateKey, subject: str) -> None:
        self._key = key
        self.subject = subject
        raw = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        self.public_key = b64url(raw)  # what browsers pass to pushManager.subscribe()
        self._tokens: dict[str, tuple[int, str]] = {}

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
