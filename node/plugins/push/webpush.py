"""Web Push (RFC 8030) with an encrypted payload (RFC 8291, aes128gcm) and VAPID (RFC 8292).

A browser's `PushSubscription` gives an endpoint at its push service plus two keys: the
subscription's P-256 public key (`p256dh`) and a 16-byte authentication secret (`auth`).
The payload is encrypted for that key with a fresh ephemeral key pair per message by
`http_ece` (the library the Web Push reference implementations use); only the browser
can read it, never the push service. The request carries the VAPID `Authorization`.
"""

from __future__ import annotations

from typing import Any

import http_ece
import orjson
from cryptography.hazmat.primitives.asymmetric import ec

from ... import ChatError
from .http_client import PushHTTP
from .providers import PushFailed, check_endpoint, check_status
from .vapid import Vapid, b64url_decode


def encrypt(payload: bytes, p256dh: bytes, auth: bytes, *, salt: bytes | None = None,
            sender: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    """An RFC 8291 message body: aes128gcm, one record, the sender's key as key id.

    `salt` and `sender` are fixed only to reproduce the RFC's test vector.
    """
    sender = sender or ec.generate_private_key(ec.SECP256R1())
    return http_ece.encrypt(payload, salt=salt, private_key=sender, dh=p256dh, auth_secret=auth,
                            version="aes128gcm")


def _decode_key(value: Any, name: str, length: int) -> bytes:
    try:
        raw = b64url_decode(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != length:
        raise ChatError("bad_request", f"'keys.{name}' must be {length} bytes, base64url")
    return raw


class WebPushProvider:
    def __init__(self, http: PushHTTP, vapid: Vapid, *, ttl: int) -> None:
        self._http = http
        self._vapid = vapid
        self._ttl = ttl

    def check_target(self, body: dict[str, Any]) -> dict[str, Any]:
        endpoint = check_endpoint(body.get("endpoint"), self._http.allow_private)
        keys = body.get("keys")
        if not isinstance(keys, dict):
            raise ChatError("bad_request", "'keys' must be {\"p256dh\": ..., \"auth\": ...} from the subscription")
        p256dh = _decode_key(keys.get("p256dh"), "p256dh", 65)
        _decode_key(keys.get("auth"), "auth", 16)
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
        except ValueError:
            raise ChatError("bad_request", "'keys.p256dh' is not a P-256 public key") from None
        return {"endpoint": endpoint, "keys": {"p256dh": keys["p256dh"], "auth": keys["auth"]}}

    async def send(self, target: dict[str, Any], notification: dict[str, Any]) -> None:
        endpoint = target["endpoint"]
        if not await self._vapid.ready():
            raise PushFailed("the VAPID key is not ready yet", retry=True)
        body = encrypt(orjson.dumps(notification), b64url_decode(target["keys"]["p256dh"]),
                       b64url_decode(target["keys"]["auth"]))
        answer = await self._http.post(endpoint, body, {
            "Authorization": self._vapid.authorization(endpoint),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "TTL": str(self._ttl),
            "Urgency": "high",
        })
        check_status(answer.status, answer.headers)
