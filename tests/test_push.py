"""The push plugin end to end: a real node notifies a real HTTP receiver on loopback.

For Web Push the test plays the browser: it makes the subscription's P-256 key pair and
auth secret, decrypts what arrives with its own RFC 8291 code (cryptography's ECDH, HKDF
and AES-GCM; not the library the node encrypts with) and checks the VAPID JWT's ES256
signature and claims against the node's public key.
"""

from __future__ import annotations

import base64
import datetime
import logging
import os
import socket
import time
import zlib
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import orjson
import pytest
import trio
from conftest import PASSWORD, make_config, new_user, running_node, started_together, wait_for_notifications
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from node import hookimpl
from node.app import serve_node
from node.client import ChatClient, ClientError
from node.core.chats import now_ms
from node.plugins.push.providers import PushGone
from node.plugins.push.webpush import encrypt
from node.testing import wait_until

X962 = serialization.Encoding.X962
UNCOMPRESSED = serialization.PublicFormat.UncompressedPoint


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- a push service on loopback -----------------------------------------------------------


class Receiver:
    """A tiny HTTP server (raw ASGI on hypercorn) that records every request and answers
    with the next status from `statuses` (then 201), or from `by_path[path]` if given, and
    with `answer` (headers, body) if given, else an empty body."""

    def __init__(self, statuses: list[int] | None = None, by_path: dict[str, list[int]] | None = None,
                 answer: tuple[list[tuple[bytes, bytes]], bytes] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.by_path = {path: list(codes) for path, codes in (by_path or {}).items()}
        self.answer = answer or ([(b"content-length", b"0")], b"")
        self._send, self.requests = trio.open_memory_channel[dict[str, Any]](1000)
        self.url = ""

    async def app(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        queue = self.by_path.get(scope["path"], self.statuses)
        status = queue.pop(0) if queue else 201
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self._send.send_nowait({"path": scope["path"], "headers": headers, "body": body, "status": status})
        headers, answer = self.answer
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        with trio.fail_after(timeout):
            return await self.requests.receive()

    def received_nowait(self) -> list[dict[str, Any]]:
        out = []
        while True:
            try:
                out.append(self.requests.receive_nowait())
            except trio.WouldBlock:
                return out


@asynccontextmanager
async def receiver(statuses: list[int] | None = None, by_path: dict[str, list[int]] | None = None,
                   answer: tuple[list[tuple[bytes, bytes]], bytes] | None = None, tls: tuple[str, str] | None = None):
    """A Receiver on 127.0.0.1; `tls` = (certificate file, key file) serves https."""
    r = Receiver(statuses, by_path, answer)
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    if tls is not None:
        config.certfile, config.keyfile = tls
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, r.app, config, shutdown_trigger=stop.wait))
        r.url = binds[0]
        try:
            yield r
        finally:
            stop.set()


def push_config(tmp_path, **push):
    settings = {"allow_private_endpoints": True, "retry_base": 0.05, "collapse_window": 0.0, **push}
    return make_config(tmp_path, plugins={"push": settings})


class Browser:
    """What a browser's PushSubscription holds: a P-256 key pair and an auth secret."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)

    @property
    def keys(self) -> dict[str, str]:
        return {"p256dh": b64u(self.key.public_key().public_bytes(X962, UNCOMPRESSED)), "auth": b64u(self.auth)}

    def decrypt(self, body: bytes) -> bytes:
        return rfc8291_decrypt(body, self.key, self.auth)


def rfc8291_decrypt(body: bytes, ua_private: ec.EllipticCurvePrivateKey, auth_secret: bytes) -> bytes:
    """RFC 8291 section 3 + RFC 8188, the receiving side, from the primitives up."""
    salt, rs, idlen = body[:16], int.from_bytes(body[16:20], "big"), body[20]
    as_public, ciphertext = body[21:21 + idlen], body[21 + idlen:]
    assert idlen == 65 and len(ciphertext) <= rs, "one record, keyid = the sender's public key"
    ua_public = ua_private.public_key().public_bytes(X962, UNCOMPRESSED)
    shared = ua_private.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), as_public))
    ikm = HKDF(hashes.SHA256(), 32, salt=auth_secret, info=b"WebPush: info\x00" + ua_public + as_public).derive(shared)
    cek = HKDF(hashes.SHA256(), 16, salt=salt, info=b"Content-Encoding: aes128gcm\x00").derive(ikm)
    nonce = HKDF(hashes.SHA256(), 12, salt=salt, info=b"Content-Encoding: nonce\x00").derive(ikm)
    padded = AESGCM(cek).decrypt(nonce, ciphertext, None).rstrip(b"\x00")
    assert padded.endswith(b"\x02"), "the last record ends with the 0x02 delimiter"
    return padded[:-1]


def check_vapid(authorization: str, public_key: str, endpoint_origin: str) -> dict[str, Any]:
    """RFC 8292: `vapid t=<JWT>, k=<key>`; the JWT is ES256 over aud/exp/sub."""
    scheme, _, params = authorization.partition(" ")
    assert scheme == "vapid"
    fields = dict(part.strip().split("=", 1) for part in params.split(","))
    assert fields["k"] == public_key
    header_b64, claims_b64, signature_b64 = fields["t"].split(".")
    assert orjson.loads(unb64u(header_b64)) == {"typ": "JWT", "alg": "ES256"}
    claims = orjson.loads(unb64u(claims_b64))
    signature = unb64u(signature_b64)
    assert len(signature) == 64
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64u(public_key))
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    key.verify(der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        key.verify(der, f"{header_b64}.{claims_b64}x".encode(), ec.ECDSA(hashes.SHA256()))
    assert claims["aud"] == endpoint_origin
    assert time.time() < claims["exp"] <= time.time() + 24 * 3600
    assert claims["sub"].startswith(("mailto:", "https:"))
    return claims


# -- Web Push -------------------------------------------------------------------------------


async def test_web_push_is_encrypted_for_the_subscription_and_signed_with_vapid(tmp_path):
    config = push_config(tmp_path, vapid_subject="mailto:ops@example.org")
    async with receiver() as service, running_node(config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        browser = Browser()
        with trio.fail_after(20):
            public_key = await bob.vapid_public_key()
            assert len(unb64u(public_key)) == 65 and unb64u(public_key)[0] == 4
            target = await bob.register_push_target("webpush", f"{service.url}/push/bob-1", browser.keys)
            assert target["kind"] == "webpush" and "keys" not in target
            assert await bob.push_targets() == [target]
            async with alice.connect() as a:
                ack = await a.send_text(chat["id"], "the secret plan")
            assert ack["status"] == "pending"  # bob has no device online
            request = await service.next()
        headers = request["headers"]
        assert request["path"] == "/push/bob-1"
        assert headers["content-encoding"] == "aes128gcm" and int(headers["ttl"]) > 0
        assert b"secret plan" not in request["body"]
        claims = check_vapid(headers["authorization"], public_key, service.url)
        assert claims["sub"] == "mailto:ops@example.org"
        notification = orjson.loads(browser.decrypt(request["body"]))
        assert notification == {
            "type": "message", "node": node.config.node.name, "chat": chat["id"], "from": alice.user["id"],
            "message": ack["id"], "seq": ack["seq"], "ts": ack["ts"], "count": 1,
        }
        await alice.aclose()
        await bob.aclose()


def test_encryption_reproduces_the_rfc_8291_example():
    """RFC 8291 section 5: fixed keys and salt give exactly the published message."""
    sender = ec.derive_private_key(int.from_bytes(unb64u("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"), "big"),
                                   ec.SECP256R1())
    receiver_public = unb64u("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4")
    auth = unb64u("BTBZMqHH6r4Tts7J_aSIgg")
    expected = ("DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEq"
                "KK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN")
    body = encrypt(b"When I grow up, I want to be a watermelon", receiver_public, auth,
                   salt=unb64u("DGv6ra1nlYgDCS1FRnbzlw"), sender=sender)
    assert b64u(body) == expected
    ua_private = ec.derive_private_key(int.from_bytes(unb64u("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"), "big"),
                                       ec.SECP256R1())
    assert rfc8291_decrypt(body, ua_private, auth) == b"When I grow up, I want to be a watermelon"


async def test_the_vapid_key_is_made_once_and_kept_in_the_store(tmp_path):
    config = push_config(tmp_path)
    async with running_node(config) as node:
        alice = await new_user(node, "alice")
        first = await alice.vapid_public_key()
        await alice.aclose()
        rows = await node.plugins.contexts["push"].store.table("keys").scan()
    assert len(rows) == 1 and rows[0][1].startswith(b"-----BEGIN PRIVATE KEY-----")
    assert not (config.data_dir / "push" / "vapid_private.pem").exists()  # shared by a cluster, not a file
    async with running_node(config) as node:
        alice = ChatClient(node.http_url)
        assert await alice.vapid_public_key() == first
        await alice.aclose()


async def test_the_key_file_of_an_older_version_is_taken_over(tmp_path):
    """Browsers subscribed with the key an older version kept in data/push/ keep working."""
    config = push_config(tmp_path)
    old = ec.generate_private_key(ec.SECP256R1())
    folder = config.data_dir / "push"
    folder.mkdir(parents=True)
    (folder / "vapid_private.pem").write_bytes(old.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    async with running_node(config) as node:
        client = ChatClient(node.http_url)
        assert await client.vapid_public_key() == b64u(old.public_key().public_bytes(X962, UNCOMPRESSED))
        await client.aclose()


@pytest.mark.engine("postgresql")
async def test_two_nodes_started_at_once_share_one_key_and_push_exactly_once(tmp_path, pg_dsn):
    """Two nodes on one database start at the same moment with no key yet: they settle on
    one. A browser subscribed through node A is notified once, by node B, which stored the
    message, signed with that key."""
    def config(name: str, node_id: int):
        return make_config(tmp_path / name, node={"id": node_id, "name": name},
                           storage={"engine": "postgresql", "dsn": pg_dsn},
                           plugins={"push": {"allow_private_endpoints": True, "collapse_window": 0.0}})

    async with receiver() as service, started_together([config("a", 1), config("b", 2)]) as (a, b):
        alice, bob = await new_user(a, "alice"), await new_user(a, "bob")
        alice_on_b = ChatClient(b.http_url)
        await alice_on_b.login("alice", PASSWORD)
        with trio.fail_after(30):
            key_a = await bob.vapid_public_key()
            assert await alice_on_b.vapid_public_key() == key_a
            browser = Browser()
            await bob.register_push_target("webpush", f"{service.url}/push/bob", browser.keys)
            chat = await alice.open_direct(username="bob")
            async with alice_on_b.connect() as conn:
                ack = await conn.send_text(chat["id"], "through b")
            request = await service.next()
            check_vapid(request["headers"]["authorization"], key_a, service.url)
            assert orjson.loads(browser.decrypt(request["body"]))["message"] == ack["id"]
            await wait_for_notifications(a)
            await wait_for_notifications(b)

            def sent() -> list[int]:
                return [n.plugins.pm.get_plugin("push").dispatcher.statistics()["sent"] for n in (a, b)]

            await wait_until(lambda: sum(sent()) >= 1, interval=0.01)  # the count goes up once the service answered
        assert sent() == [0, 1] and service.received_nowait() == []
        for client in (alice, bob, alice_on_b):
            await client.aclose()


# -- webhooks, previews, online users ---------------------------------------------------------


async def test_webhook_with_previews_and_none_for_online_users(tmp_path):
    async with receiver() as hook, running_node(push_config(tmp_path, previews=True)) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        with trio.fail_after(20):
            await bob.register_push_target("webhook", f"{hook.url}/up/bob")
            async with alice.connect() as a:
                async with bob.connect() as b:  # bob is online: no push for these
                    for text in ("one", "two"):
                        await a.send_text(chat["id"], text)
                        await b.wait_for("message", text=text)
                ack = await a.send_text(chat["id"], "while you were away " + "x" * 300)
            request = await hook.next()
        assert request["headers"]["content-type"] == "application/json"
        notification = orjson.loads(request["body"])
        # the first notification is about the message sent while bob was offline
        assert notification["message"] == ack["id"] and notification["count"] == 1
        assert notification["kind"] == "text" and notification["sender_name"] == "alice"
        assert notification["text"].startswith("while you were away") and len(notification["text"]) == 200
        assert hook.received_nowait() == []
        await alice.aclose()
        await bob.aclose()


async def test_no_previews_by_default(tmp_path):
    async with receiver() as hook, running_node(push_config(tmp_path)) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        group = await alice.create_group("g", usernames=["bob"])
        media = await alice.upload(b"plain words\n" * 10)
        with trio.fail_after(20):
            await bob.register_push_target("webhook", f"{hook.url}/hook")
            async with alice.connect() as a:
                await a.send_text(group["id"], "caption text", kind="file", media=media["id"])
            notification = orjson.loads((await hook.next())["body"])
        assert set(notification) == {"type", "node", "chat", "from", "message", "seq", "ts", "count"}
        await alice.aclose()
        await bob.aclose()


async def test_a_burst_is_collapsed_per_target(tmp_path):
    async with receiver() as hook, running_node(push_config(tmp_path, collapse_window=0.5)) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        with trio.fail_after(20):
            await bob.register_push_target("webhook", f"{hook.url}/a")
            await bob.register_push_target("webhook", f"{hook.url}/b")
            async with alice.connect() as a:
                acks = await a.send_many([{"chat": chat["id"], "text": f"m{i}"} for i in range(10)])
            per_target: dict[str, list[dict[str, Any]]] = {"/a": [], "/b": []}
            while sum(n["count"] for n in per_target["/a"]) < 10 or sum(n["count"] for n in per_target["/b"]) < 10:
                request = await hook.next()
                per_target[request["path"]].append(orjson.loads(request["body"]))
        for notifications in per_target.values():
            assert 1 <= len(notifications) <= 2  # the first at once, the rest when the window ends
            assert notifications[-1]["message"] == acks[-1]["id"]
        await alice.aclose()
        await bob.aclose()


# -- failures -------------------------------------------------------------------------------------


async def test_failures_are_retried_with_backoff(tmp_path):
    async with receiver(statuses=[500, 503]) as hook, running_node(push_config(tmp_path)) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        with trio.fail_after(20):
            await bob.register_push_target("webhook", f"{hook.url}/flaky")
            async with alice.connect() as a:
                await a.send_text(chat["id"], "hello")
            attempts = [await hook.next() for _ in range(3)]
            push = node.plugins.pm.get_plugin("push")
            await wait_until(lambda: push.dispatcher.statistics()["sent"] > 0, interval=0.01)  # the answer is read
        assert [r["status"] for r in attempts] == [500, 503, 201]
        assert len({r["body"] for r in attempts}) == 1  # the same notification, again
        assert push.dispatcher.statistics()["retried"] == 2 and push.dispatcher.statistics()["failed"] == 0
        await alice.aclose()
        await bob.aclose()


async def test_attempts_are_bounded(tmp_path):
    async with receiver(statuses=[500] * 3) as hook, running_node(push_config(tmp_path, max_attempts=3)) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        push = node.plugins.pm.get_plugin("push")
        with trio.fail_after(20):
            await bob.register_push_target("webhook", f"{hook.url}/down")
            async with alice.connect() as a:
                await a.send_text(chat["id"], "hello")
                assert [(await hook.next())["status"] for _ in range(3)] == [500, 500, 500]
                await wait_until(lambda: push.dispatcher.statistics()["failed"] > 0, interval=0.01)
                await a.send_text(chat["id"], "later")  # the next message is tried afresh
                later = await hook.next()
        assert later["status"] == 201 and orjson.loads(later["body"])["count"] == 1
        assert len(await bob.push_targets()) == 1
        await alice.aclose()
        await bob.aclose()


@pytest.mark.parametrize("status", [404, 410])
async def test_a_gone_endpoint_is_removed(tmp_path, status):
    async with receiver(by_path={"/gone": [status]}) as hook, running_node(push_config(tmp_path)) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        with trio.fail_after(20):
            await bob.register_push_target("webhook", f"{hook.url}/gone")
            keep = await bob.register_push_target("webhook", f"{hook.url}/kept")
            async with alice.connect() as a:
                await a.send_text(chat["id"], "hello")
            paths = sorted([(await hook.next())["path"], (await hook.next())["path"]])
            assert paths == ["/gone", "/kept"]

            async def one_left() -> bool:
                return len(await bob.push_targets()) == 1

            await wait_until(one_left, interval=0.01)
        assert await bob.push_targets() == [keep]
        await alice.aclose()
        await bob.aclose()


# -- logged-out devices ------------------------------------------------------------------------------


@asynccontextmanager
async def bob_on_two_devices(node):
    """Bob logged in on a laptop and a phone (`phone.device_id` is the phone's device id)."""
    async with ChatClient(node.http_url) as laptop, ChatClient(node.http_url) as phone:
        await laptop.register("bob", PASSWORD)
        await laptop.login("bob", PASSWORD, device="laptop")
        phone.device_id = (await phone.login("bob", PASSWORD, device="phone"))["device_id"]
        yield laptop, phone


def revoke_phone(how: str, laptop: ChatClient, phone: ChatClient):
    """Log the phone out: itself, from the laptop's device list, or by a password change."""
    if how == "logout":
        return phone.logout()
    if how == "device_list":
        return laptop.request("DELETE", f"/api/me/devices/{phone.device_id}")
    change = {"current_password": PASSWORD, "new_password": "a new passphrase"}
    return laptop.request("POST", "/api/me/password", change)


async def stored_targets(node, user: dict[str, Any]) -> list[str]:
    """The endpoints the push plugin has stored for a user."""
    return sorted(t["endpoint"] for t in await node.plugins.pm.get_plugin("push").targets.of_user(int(user["id"])))


async def idle(node) -> None:
    """Until the push plugin has handled every notification so far and its dispatcher has
    nothing left to send, to retry or to wait for (what it sent has reached the receiver)."""
    await wait_for_notifications(node)
    push = node.plugins.pm.get_plugin("push")
    await wait_until(lambda: push.dispatcher.statistics()["targets_waiting"] == 0, interval=0.01)


@pytest.mark.parametrize("how", ["logout", "device_list", "password_change"])
async def test_a_logged_out_device_gets_no_more_pushes(tmp_path, how):
    async with (receiver() as hook, running_node(push_config(tmp_path)) as node,
                bob_on_two_devices(node) as (laptop, phone)):
        alice = await new_user(node, "alice")
        chat = await alice.open_direct(username="bob")
        with trio.fail_after(20):
            kept = await laptop.register_push_target("webhook", f"{hook.url}/laptop")
            await phone.register_push_target("webhook", f"{hook.url}/phone")
            await revoke_phone(how, laptop, phone)
            async with alice.connect() as a:
                ack = await a.send_text(chat["id"], "are you there?")
            request = await hook.next()
            await idle(node)  # a second request, were one coming, would have come
        assert request["path"] == "/laptop" and orjson.loads(request["body"])["message"] == ack["id"]
        assert hook.received_nowait() == []
        assert await laptop.push_targets() == [kept]
        assert await stored_targets(node, laptop.user) == [f"{hook.url}/laptop"]
        await alice.aclose()


async def test_a_failed_push_is_not_retried_after_its_device_logs_out(tmp_path):
    config = push_config(tmp_path, retry_base=1.0)
    async with (receiver(by_path={"/phone": [500]}) as hook, running_node(config) as node,
                bob_on_two_devices(node) as (laptop, phone)):
        alice = await new_user(node, "alice")
        chat = await alice.open_direct(username="bob")
        push = node.plugins.pm.get_plugin("push")
        with trio.fail_after(20):
            await laptop.register_push_target("webhook", f"{hook.url}/laptop")
            await phone.register_push_target("webhook", f"{hook.url}/phone")
            async with alice.connect() as a:
                await a.send_text(chat["id"], "hello")
            paths = sorted([(await hook.next())["path"], (await hook.next())["path"]])
            # the phone's 500 is read: a retry is due in 1 s
            await wait_until(lambda: push.dispatcher.statistics()["retried"] > 0, interval=0.01)
            await phone.logout()
            await idle(node)  # the logout is handled, and the retry with it, whichever came first
        assert paths == ["/laptop", "/phone"]
        extra = hook.received_nowait()
        assert extra == [], [(r["path"], orjson.loads(r["body"])) for r in extra]
        assert push.dispatcher.statistics()["targets_waiting"] == 0  # nothing left queued for the phone
        await alice.aclose()


async def test_a_renewed_target_belongs_to_the_device_that_renewed_it(tmp_path):
    async with (receiver() as hook, running_node(push_config(tmp_path)) as node,
                bob_on_two_devices(node) as (laptop, phone)):
        first = await phone.register_push_target("webhook", f"{hook.url}/shared")
        renewed = await laptop.register_push_target("webhook", f"{hook.url}/shared")
        assert renewed["id"] == first["id"]
        await phone.logout()
        await wait_for_notifications(node)  # the push plugin's pump handles the logout
        assert await laptop.push_targets() == [renewed]


# -- what the node's HTTP client connects to and reads ---------------------------------------------


def rss_bytes() -> int:
    """This process's resident memory: the node runs in it."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def gzip_of_zeros(mib: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1024 * 1024)
    return b"".join(packer.compress(zeros) for _ in range(mib)) + packer.flush()


async def test_a_gzip_bomb_answer_is_neither_read_nor_retried(tmp_path):
    """A webhook that answers 200 with 256 KiB of gzip (256 MiB of zeros) although the node
    asked for `Accept-Encoding: identity`: the node reads a few KiB of it, decodes nothing,
    and the notification counts as sent, once."""
    bomb = gzip_of_zeros(256)
    answer = ([(b"content-type", b"application/json"), (b"content-encoding", b"gzip"),
               (b"content-length", str(len(bomb)).encode())], bomb)
    async with (receiver(statuses=[200], answer=answer) as hook,
                running_node(push_config(tmp_path, retry_base=0.01)) as node):
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        stats = node.plugins.pm.get_plugin("push").dispatcher.statistics
        with trio.fail_after(20):
            await bob.register_push_target("webhook", f"{hook.url}/bomb")
            before = peak = rss_bytes()
            async with alice.connect() as a:
                await a.send_text(chat["id"], "hello")
            request = await hook.next()

            def answered() -> bool:  # the node's memory sampled until then
                nonlocal peak
                peak = max(peak, rss_bytes())
                return stats()["sent"] + stats()["retried"] + stats()["failed"] > 0

            await wait_until(answered, interval=0.01)
        assert peak - before < 32 * 1024 * 1024, f"the node grew by {(peak - before) >> 20} MiB"
        assert stats()["sent"] == 1 and stats()["retried"] == 0
        assert hook.received_nowait() == []
        assert request["headers"]["accept-encoding"] == "identity"
        await alice.aclose()
        await bob.aclose()


class RebindingDNS(trio.abc.HostnameResolver):
    """The DNS of `push.test` as an attacker runs it: the first lookup gets a public address
    (it passes the check), every later one gets 127.0.0.1 (the node's own network)."""

    def __init__(self, public: str) -> None:
        self.public = public
        self.lookups = 0

    async def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        if name != "push.test":
            return await trio.to_thread.run_sync(socket.getaddrinfo, host, port, family, type, proto, flags)
        self.lookups += 1
        address = self.public if self.lookups == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port)))]

    async def getnameinfo(self, sockaddr, flags):
        return await trio.to_thread.run_sync(socket.getnameinfo, sockaddr, flags)


def issue_certificate(folder, name: str) -> tuple[str, str, str]:
    """A CA and a server certificate for `name` it signed: (CA file, certificate file, key file)."""
    def make(subject: str, issuer_key, issuer: str | None, *, ca: bool):
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or subject)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                            critical=True)
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
        return key, builder.sign(issuer_key or key, hashes.SHA256())

    ca_key, ca_cert = make("test CA", None, None, ca=True)
    key, cert = make(name, ca_key, "test CA", ca=False)
    paths = [str(folder / f) for f in ("ca.pem", "cert.pem", "key.pem")]
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (folder / "cert.pem").write_bytes(cert.public_bytes(pem))
    (folder / "key.pem").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return paths[0], paths[1], paths[2]


class FixedDNS(RebindingDNS):
    """`push.test` is 127.0.0.1, every time."""

    def __init__(self) -> None:
        super().__init__(public="127.0.0.1")


async def test_a_pinned_https_request_keeps_the_host_name_for_tls_and_host(tmp_path, monkeypatch):
    """The connection goes to the address looked up, but TLS still names the host (SNI, and
    the certificate is checked against it) and so does the Host header."""
    ca, cert, key = issue_certificate(tmp_path, "push.test")
    monkeypatch.setenv("SSL_CERT_FILE", ca)  # the node's TLS trusts the test CA (read at start)
    dns = FixedDNS()
    previous_dns = trio.socket.set_custom_hostname_resolver(dns)
    try:
        async with receiver(tls=(cert, key)) as hook, running_node(push_config(tmp_path)) as node:
            alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
            chat = await alice.open_direct(username="bob")
            port = int(hook.url.rsplit(":", 1)[1])
            with trio.fail_after(20):
                await bob.register_push_target("webhook", f"https://push.test:{port}/tls")
                async with alice.connect() as a:
                    await a.send_text(chat["id"], "hello")
                request = await hook.next()
            assert request["path"] == "/tls" and request["headers"]["host"] == f"push.test:{port}"
            assert dns.lookups == 1
            await alice.aclose()
            await bob.aclose()
    finally:
        trio.socket.set_custom_hostname_resolver(previous_dns)


class LoopbackOnly(trio.abc.SocketFactory):
    """Every socket made in this test is bound to the loopback interface, so a connection to
    a public address goes nowhere (nothing leaves the machine)."""

    def socket(self, family=socket.AF_INET, type=socket.SOCK_STREAM, proto=0):
        sock = socket.socket(family, type, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
        return trio.socket.from_stdlib_socket(sock)


async def test_a_rebinding_name_cannot_reach_the_nodes_own_network(tmp_path):
    """DNS rebinding: the name is looked up once, checked, and the connection goes to that
    checked (public) address; a second lookup, which would answer 127.0.0.1, never happens."""
    reached = []

    async def service_on_loopback(stream: trio.SocketStream) -> None:
        reached.append(stream)
        await stream.aclose()

    probe = socket.socket()
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
    except PermissionError:
        pytest.skip("binding a socket to the loopback interface is not permitted here")
    finally:
        probe.close()
    dns = RebindingDNS(public="93.184.216.34")
    config = push_config(tmp_path, allow_private_endpoints=False, max_attempts=2, retry_base=0.01, timeout=0.5)
    async with running_node(config) as node, trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, service_on_loopback, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        push = node.plugins.pm.get_plugin("push")
        await bob.register_push_target("webhook", f"https://push.test:{port}/hook")
        previous_dns = trio.socket.set_custom_hostname_resolver(dns)
        previous_factory = trio.socket.set_custom_socket_factory(LoopbackOnly())
        try:
            with trio.fail_after(20):
                async with alice.connect() as a:
                    await a.send_text(chat["id"], "hello")
                await wait_until(lambda: push.dispatcher.statistics()["failed"] > 0, interval=0.01)
        finally:
            trio.socket.set_custom_hostname_resolver(previous_dns)
            trio.socket.set_custom_socket_factory(previous_factory)
        assert reached == []
        assert dns.lookups == 2  # one per attempt: the second attempt was refused (127.0.0.1) at its check
        nursery.cancel_scope.cancel()
        await alice.aclose()
        await bob.aclose()


# -- registration ------------------------------------------------------------------------------------


async def test_target_registration_is_validated(tmp_path):
    async with running_node(make_config(tmp_path)) as node:  # default: public https endpoints only
        bob = await new_user(node, "bob")
        browser = Browser()
        bad = [
            ("sms", "https://push.example.org/x", None),
            ("webhook", "ftp://push.example.org/x", None),
            ("webhook", "http://push.example.org/x", None),  # https only
            ("webhook", "https://127.0.0.1:9/x", None),  # not on the node's own network
            ("webhook", "https://[::1]/x", None),
            ("webhook", "https://10.1.2.3/x", None),
            ("webhook", "https://localhost/x", None),
            ("webhook", "https://[64:ff9b::7f00:1]/x", None),  # NAT64 of 127.0.0.1
            ("webhook", "https://[64:ff9b::808:808]/x", None),  # NAT64 of a public address: refused too
            ("webhook", "https://[2002:7f00:1::1]/x", None),  # 6to4
            ("webhook", "https://[::7f00:1]/x", None),  # IPv4-compatible
            ("webhook", "https://[::ffff:10.0.0.1]/x", None),  # IPv4-mapped private
            ("webpush", "https://push.example.org/x", None),
            ("webpush", "https://push.example.org/x", {"p256dh": "AAAA", "auth": browser.keys["auth"]}),
            ("webpush", "https://push.example.org/x", {"p256dh": browser.keys["p256dh"], "auth": "AAAA"}),
            ("webpush", "https://push.example.org/x", {"p256dh": b64u(b"\x04" + bytes(64)),
                                                       "auth": browser.keys["auth"]}),  # not on the curve
        ]
        for kind, endpoint, keys in bad:
            with pytest.raises(ClientError) as refused:
                await bob.register_push_target(kind, endpoint, keys)
            assert refused.value.code == "bad_request", (kind, endpoint)
        target = await bob.register_push_target("webpush", "https://push.example.org/sub/1", browser.keys)
        again = await bob.register_push_target("webpush", "https://push.example.org/sub/1", Browser().keys)
        assert again["id"] == target["id"]  # the same subscription, renewed
        hook = await bob.register_push_target("webhook", "https://ntfy.example.org/up123")
        assert {t["id"] for t in await bob.push_targets()} == {target["id"], hook["id"]}
        alice = await new_user(node, "alice")
        assert await alice.push_targets() == []
        with pytest.raises(ClientError) as not_hers:
            await alice.delete_push_target(target["id"])
        assert not_hers.value.code == "not_found"
        await bob.delete_push_target(target["id"])
        assert await bob.push_targets() == [hook]
        unauthenticated = ChatClient(node.http_url)
        with pytest.raises(ClientError) as anonymous:
            await unauthenticated.push_targets()
        assert anonymous.value.code == "unauthorized"
        await unauthenticated.aclose()
        await alice.aclose()
        await bob.aclose()


async def test_the_oldest_targets_make_way(tmp_path):
    async with running_node(push_config(tmp_path, max_targets_per_user=2)) as node:
        bob = await new_user(node, "bob")
        first = await bob.register_push_target("webhook", "http://127.0.0.1:9/1")
        await wait_until(lambda: now_ms() > first["created"])  # the next one is younger (Unix ms)
        second = await bob.register_push_target("webhook", "http://127.0.0.1:9/2")
        await wait_until(lambda: now_ms() > second["created"])
        third = await bob.register_push_target("webhook", "http://127.0.0.1:9/3")
        assert {t["id"] for t in await bob.push_targets()} == {second["id"], third["id"]}
        assert first["id"] not in {t["id"] for t in await bob.push_targets()}
        await bob.aclose()


# -- a provider from another plugin ----------------------------------------------------------------


class CarrierPigeon:
    """A third-party provider: `register_push_providers` adds the kind "pigeon"."""

    name = "pigeon"

    def __init__(self) -> None:
        self.sent, self._inbox = trio.open_memory_channel(10)

    @hookimpl
    def register_push_providers(self, ctx):
        return {"pigeon": self}

    def check_target(self, body):
        return {"endpoint": str(body.get("endpoint"))}

    async def send(self, target, notification):
        self.sent.send_nowait((target["endpoint"], notification))
        if target["endpoint"].startswith("empty"):  # the bird came back: no one lives there now
            raise PushGone(target["endpoint"])


async def test_providers_are_pluggable(tmp_path):
    pigeon = CarrierPigeon()
    async with trio.open_nursery() as nursery:
        node = await nursery.start(partial(serve_node, push_config(tmp_path), plugins=[pigeon],
                                           load_entrypoints=False))
        try:
            alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
            chat = await alice.open_direct(username="bob")
            with trio.fail_after(10):
                await bob.register_push_target("pigeon", "loft 7")
                async with alice.connect() as a:
                    ack = await a.send_text(chat["id"], "coo")
                endpoint, notification = await pigeon._inbox.receive()
            assert endpoint == "loft 7" and notification["message"] == ack["id"]

            # PushGone from a provider (the import docs/push.md gives) removes that target alone.
            with trio.fail_after(10):
                kept = (await bob.push_targets())[0]
                await bob.register_push_target("pigeon", "empty loft")
                async with alice.connect() as a:
                    await a.send_text(chat["id"], "coo coo")
                endpoints = sorted([(await pigeon._inbox.receive())[0], (await pigeon._inbox.receive())[0]])
                assert endpoints == ["empty loft", "loft 7"]

                async def one_left() -> bool:
                    return len(await bob.push_targets()) == 1

                await wait_until(one_left, interval=0.01)
            assert await bob.push_targets() == [kept]
            await alice.aclose()
            await bob.aclose()
        finally:
            node.request_shutdown()


@pytest.mark.engine("postgresql")
async def test_a_push_due_while_the_database_is_away_is_sent_once_it_is_back(tmp_path, caplog):
    """The second message of a burst waits for the end of the collapse window, and then
    the database is away (failing over): the push is tried again until it is back, and
    the node keeps running meanwhile."""
    from pgserver import PgServer

    with PgServer() as pg:
        dsn = await trio.to_thread.run_sync(pg.create_database)
        config = make_config(tmp_path, storage={"engine": "postgresql", "dsn": dsn, "commit_timeout": 5.0},
                             plugins={"push": {"allow_private_endpoints": True, "collapse_window": 3.0}})
        async with receiver() as hook, running_node(config) as node:
            alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
            chat = await alice.open_direct(username="bob")
            with trio.fail_after(60):
                await bob.register_push_target("webhook", f"{hook.url}/b")
                async with alice.connect() as a:
                    await a.send_text(chat["id"], "first")
                    await hook.next()  # at once
                    second = await a.send_text(chat["id"], "second")  # held until the window ends
                    await trio.to_thread.run_sync(pg.kill)
                with caplog.at_level(logging.WARNING, logger="node.plugins.push.dispatch"):
                    await wait_until(lambda: any("not sent yet" in r.getMessage() for r in caplog.records))
                await trio.to_thread.run_sync(pg.resume)
                notification = orjson.loads((await hook.next(timeout=30))["body"])
            assert notification["message"] == second["id"] and notification["count"] == 1
            assert node.plugins.pm.get_plugin("push").dispatcher.statistics()["deferred"] >= 1
            await alice.aclose()
            await bob.aclose()
