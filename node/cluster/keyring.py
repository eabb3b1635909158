"""Sealing and opening cluster packets: AES-GCM with a rotatable keyring.

Every datagram and every stream frame goes through ``Keyring.seal``/``open``. The
primary key encrypts; every key in the ring is tried to decrypt, so an operator
rotates keys without downtime: add the new key everywhere, make it primary
everywhere, then remove the old one.

Envelope (one byte of version, then either form)::

    0x01 | nonce (12) | AES-GCM(ciphertext + tag 16)     keyed cluster
    0x00 | body                                          no key (loopback only)

The version byte and a purpose label (datagram or stream) are authenticated as
associated data, so a datagram cannot be replayed as a stream frame. A keyed node
drops plaintext envelopes and an unkeyed node drops sealed ones: both sides of a
mixed cluster see the other as unreachable rather than trusting it.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEALED = 0x01
PLAIN = 0x00
NONCE_BYTES = 12
TAG_BYTES = 16
SEAL_OVERHEAD = 1 + NONCE_BYTES + TAG_BYTES
PURPOSE_DATAGRAM = b"chatnode/cluster/datagram"
PURPOSE_STREAM = b"chatnode/cluster/stream"


class OpenError(Exception):
    """The envelope is not ours: wrong key, tampered, truncated or the wrong kind."""


class Keyring:
    """The cluster's keys; with none, packets travel in the clear (loopback clusters only)."""

    def __init__(self, keys: list[bytes]) -> None:
        self._keys = [AESGCM(k) for k in keys]

    @property
    def encrypted(self) -> bool:
        return bool(self._keys)

    @property
    def overhead(self) -> int:
        return SEAL_OVERHEAD if self._keys else 1

    def seal(self, body: bytes, purpose: bytes) -> bytes:
        if not self._keys:
            return bytes((PLAIN,)) + body
        nonce = os.urandom(NONCE_BYTES)
        header = bytes((SEALED,))
        return header + nonce + self._keys[0].encrypt(nonce, body, header + purpose)

    def open(self, envelope: bytes, purpose: bytes) -> bytes:
        if not envelope:
            raise OpenError("empty packet")
        kind = envelope[0]
        if not self._keys:
            if kind != PLAIN:
                raise OpenError("sealed packet, but this node has no cluster key")
            return envelope[1:]
        if kind != SEALED:
            raise OpenError("unsealed packet on a keyed cluster")
        if len(envelope) < SEAL_OVERHEAD:
            raise OpenError("truncated packet")
        nonce = envelope[1 : 1 + NONCE_BYTES]
        aad = envelope[:1] + purpose
        for key in self._keys:
            try:
                return key.decrypt(nonce, envelope[1 + NONCE_BYTES :], aad)
            except InvalidTag:
                continue
        raise OpenError("no key in the keyring opens this packet")
