"""The chat socket's WebSocket layer (node/core/websocket.py) against real clients:
fragmented messages, pings, the close handshake, and peers that break the protocol."""

from __future__ import annotations

import struct

import orjson
import pytest
import trio
import trio.testing
from conftest import make_config, new_user, running_node
from trio_websocket import open_websocket_url

from node.core.websocket import _quick_upgrade

KEY = b"\x01\x02\x03\x04"


def client_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A masked client frame, as RFC 6455 requires of clients."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    masked = bytes(b ^ KEY[i % 4] for i, b in enumerate(payload))
    return head + KEY + masked


class RawClient:
    """A WebSocket client that writes frames by hand and reads the server's frames."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def connect(cls, ws_url: str) -> RawClient:
        host, port = ws_url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(
            f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        client = cls(stream)
        head = await client._read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return client

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError
        self.buffer += data

    async def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            await self._fill()
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    async def read_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame (servers never mask)."""
        while len(self.buffer) < 2:
            await self._fill()
        opcode, n = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
        start = 2
        if n == 126:
            while len(self.buffer) < 4:
                await self._fill()
            n, start = struct.unpack("!H", self.buffer[2:4])[0], 4
        elif n == 127:
            while len(self.buffer) < 10:
                await self._fill()
            n, start = struct.unpack("!Q", self.buffer[2:10])[0], 10
        while len(self.buffer) < start + n:
            await self._fill()
        payload, self.buffer = self.buffer[start : start + n], self.buffer[start + n :]
        return opcode, payload

    async def read_until_opcode(self, wanted: int) -> bytes:
        with trio.fail_after(5):
            while True:
                opcode, payload = await self.read_frame()
                if opcode == wanted:
                    return payload


def close_code(payload: bytes) -> int:
    return struct.unpack("!H", payload[:2])[0]


async def test_a_message_in_fragments_is_put_back_together(node, users):
    alice = await users("alice")
    client = await RawClient.connect(node.ws_url)
    hello = orjson.dumps({"type": "hello", "token": alice.token})
    third = len(hello) // 3
    await client.stream.send_all(
        client_frame(0x1, hello[:third], fin=False)
        + client_frame(0x9, b"in between")  # control frames may come between fragments
        + client_frame(0x0, hello[third : 2 * third], fin=False)
        + client_frame(0x0, hello[2 * third :])
    )
    assert await client.read_until_opcode(0xA) == b"in between"  # the pong
    frame = orjson.loads(await client.read_until_opcode(0x1))
    welcome = frame[0] if isinstance(frame, list) else frame  # may share a frame with `synced`
    assert welcome["type"] == "welcome" and welcome["user"]["username"] == "alice"
    await client.stream.aclose()


def server_text(payload: bytes) -> bytes:
    return orjson.loads(payload)


async def hello_then_pieces(client: RawClient, frames: bytes, cuts: list[int]) -> None:
    """Send `frames` in pieces cut at `cuts`, each read by the node before the next goes."""
    start = 0
    for cut in [*cuts, len(frames)]:
        await client.stream.send_all(frames[start:cut])
        await trio.testing.wait_all_tasks_blocked(cushion=0.005)
        start = cut


@pytest.mark.parametrize("size", [40, 300, 70_000])  # 7-bit, 16-bit and 64-bit lengths
async def test_frames_cut_anywhere_are_read_whole_and_in_order(tmp_path, size):
    async with running_node(make_config(tmp_path, limits={"max_message_bytes": 100_000,
                                                          "max_frame_bytes": 200_000})) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        client = await RawClient.connect(node.ws_url)
        hello = client_frame(0x1, orjson.dumps({"type": "hello", "token": alice.token}))
        texts = [f"{n} " + "x" * size for n in range(3)]
        sends = b"".join(client_frame(0x1, orjson.dumps({"type": "send", "chat": chat["id"], "kind": "text",
                                                          "client_msg_id": f"m{n}", "text": text}))
                         for n, text in enumerate(texts))
        frames = hello + sends
        # Cuts inside the first header, between header and mask, inside a mask, inside a
        # payload, and one between two whole frames.
        cuts = [1, 2, 5, len(hello) - 3, len(hello), len(hello) + 3, len(hello) + 9, len(hello) + 40]
        await hello_then_pieces(client, frames, sorted(set(cuts)))
        acks = []
        with trio.fail_after(10):
            while len(acks) < 3:
                event = server_text(await client.read_until_opcode(0x1))
                for e in event if isinstance(event, list) else [event]:
                    if e["type"] == "ack":
                        acks.append(e["client_msg_id"])
        assert acks == ["m0", "m1", "m2"]
        async with bob.connect() as b:
            got = [(await b.wait_for("message", timeout=5))["text"] for _ in texts]
        assert got == texts
        await client.stream.aclose()
        await alice.aclose()
        await bob.aclose()


async def test_a_whole_frame_over_the_limit_is_refused_from_its_header(tmp_path):
    limits = {"max_message_bytes": 2048, "max_frame_bytes": 4096}
    async with running_node(make_config(tmp_path, limits=limits)) as node:
        client = await RawClient.connect(node.ws_url)
        frame = client_frame(0x1, b"x" * 5000)
        await client.stream.send_all(frame[:100])  # the header says too big: no need to wait for the rest
        assert close_code(await client.read_until_opcode(0x8)) == 1009
        await client.stream.aclose()


async def test_a_hello_cut_short_by_the_timeout_still_gets_a_close_frame(tmp_path):
    async with running_node(make_config(tmp_path, limits={"hello_timeout": 0.3})) as node:
        client = await RawClient.connect(node.ws_url)
        await client.stream.send_all(client_frame(0x1, b'{"type": "hello", "token": "x"}')[:10])  # half a frame
        assert close_code(await client.read_until_opcode(0x8)) == 4002
        await client.stream.aclose()


@pytest.mark.parametrize("first_byte", [0xC1, 0xA1, 0x91, 0x83])  # a reserved bit, or a reserved opcode
async def test_a_frame_with_reserved_bits_or_opcode_closes_with_1002(node, users, first_byte):
    alice = await users("alice")
    client = await RawClient.connect(node.ws_url)
    await client.stream.send_all(client_frame(0x1, orjson.dumps({"type": "hello", "token": alice.token})))
    await client.read_until_opcode(0x1)
    frame = client_frame(0x1, b'{"type": "ping"}')
    await client.stream.send_all(bytes([first_byte]) + frame[1:])
    assert close_code(await client.read_until_opcode(0x8)) == 1002
    await client.stream.aclose()


async def test_a_message_too_big_in_fragments_closes_with_1009(tmp_path):
    limits = {"max_message_bytes": 2048, "max_frame_bytes": 4096}
    async with running_node(make_config(tmp_path, limits=limits)) as node:
        client = await RawClient.connect(node.ws_url)
        chunk = b"x" * 1500  # no fragment is too big, the message is
        await client.stream.send_all(
            client_frame(0x1, chunk, fin=False) + client_frame(0x0, chunk, fin=False) + client_frame(0x0, chunk)
        )
        assert close_code(await client.read_until_opcode(0x8)) == 1009
        await client.stream.aclose()


async def test_invalid_utf8_closes_with_1007(node):
    client = await RawClient.connect(node.ws_url)
    await client.stream.send_all(client_frame(0x1, b'{"type": "hello", "token": "\xff\xfe"}'))
    assert close_code(await client.read_until_opcode(0x8)) == 1007
    await client.stream.aclose()


async def test_an_unmasked_client_frame_closes_with_1002(node):
    client = await RawClient.connect(node.ws_url)
    await client.stream.send_all(b"\x81\x05hello")  # clients must mask
    assert close_code(await client.read_until_opcode(0x8)) == 1002
    await client.stream.aclose()


async def test_a_peer_still_sending_when_closed_on_gets_the_close_frame_and_a_clean_end(node):
    """The node closes (1002) while the peer's bytes are still coming: it ends its side and
    drops what follows until the peer is done, so the peer reads the close frame and then an
    orderly end of the stream. Closing with those bytes unread would reset the connection
    (ECONNRESET on the peer's reads and writes, which may cost it the close frame)."""
    client = await RawClient.connect(node.ws_url)
    trailing = 512 * 1024  # more than one read of the node's, less than what it drops (1 MiB)
    errors: list[BaseException] = []

    async def send() -> None:
        try:
            await client.stream.send_all(b"\x81\x05hello" + b"x" * trailing)  # unmasked: 1002
            await client.stream.send_eof()  # done: the node may close now
        except trio.BrokenResourceError as exc:
            errors.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            try:
                assert close_code(await client.read_until_opcode(0x8)) == 1002
                while await client.stream.receive_some(65536):
                    pass
            except trio.BrokenResourceError as exc:
                errors.append(exc)
    assert not errors, errors
    await client.stream.aclose()


async def test_ping_is_answered_and_a_client_close_is_answered_in_kind(node, users):
    alice = await users("alice")
    async with open_websocket_url(node.ws_url) as ws:
        await ws.send_message(orjson.dumps({"type": "hello", "token": alice.token}).decode())
        with trio.fail_after(5):
            await ws.ping(b"are you there")  # returns when the pong arrives
            await ws.aclose(4321, "bye")  # returns when the node answers the close frame
        assert ws.closed.code == 4321


async def test_plain_http_on_the_chat_port_gets_an_http_error(node):
    host, port = node.ws_url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(f"GET /ws HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    response = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in response:
            data = await stream.receive_some(4096)
            if not data:
                break
            response += data
    status = int(response.split(b" ", 2)[1])
    assert 400 <= status < 500
    await stream.aclose()


async def test_a_peer_that_vanishes_mid_message_does_not_disturb_others(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    client = await RawClient.connect(node.ws_url)
    await client.stream.send_all(client_frame(0x1, orjson.dumps({"type": "hello", "token": bob.token})))
    await client.read_until_opcode(0x1)
    await client.stream.send_all(client_frame(0x1, b'{"type": "send", ', fin=False))
    await client.stream.aclose()  # gone with half a message
    async with alice.connect() as a, bob.connect() as b:
        await b.synced.wait()
        await a.send_text(chat["id"], "hi")
        await b.wait_for("message", timeout=5)


HANDSHAKE = ("GET /ws?v=1 HTTP/1.1\r\nHost: h:1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


def websockets_answer(request: bytes) -> bytes | None:
    """What websockets' own handshake answers (None: it wants more, or refuses to parse)."""
    import logging

    from websockets.server import ServerProtocol

    protocol = ServerProtocol(max_size=None, logger=logging.getLogger("test.handshake"))
    protocol.receive_data(request)
    events = protocol.events_received()
    return protocol.accept(events[0]).serialize() if events else None


def without_date(response: bytes) -> bytes:
    return b"".join(line for line in response.split(b"\r\n") if not line.startswith(b"Date:"))


@pytest.mark.parametrize("extra", [
    "",
    "Origin: https://chat.example\r\nUser-Agent: Mozilla/5.0\r\nConnection: keep-alive, Upgrade\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    "X-Latin: caf\xe9\r\n",
])
def test_the_quick_handshake_answers_as_websockets_does(extra):
    request = (HANDSHAKE + extra + "\r\n").encode("latin-1")
    quick = _quick_upgrade(request)
    assert quick is not None
    path, answer, host, _origin = quick
    assert (path, host) == ("/ws?v=1", "h:1")
    assert without_date(answer) == without_date(websockets_answer(request) or b"")


@pytest.mark.parametrize("request_text", [
    HANDSHAKE,  # not complete yet
    HANDSHAKE.replace("GET", "POST") + "\r\n",
    HANDSHAKE.replace("HTTP/1.1", "HTTP/1.0") + "\r\n",
    HANDSHAKE.replace("Version: 13", "Version: 12") + "\r\n",
    HANDSHAKE.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=") + "\r\n",
    HANDSHAKE.replace("Connection: Upgrade\r\n", "") + "\r\n",
    HANDSHAKE + "Upgrade: websocket\r\n\r\n",
    HANDSHAKE + "Origin: a\r\nOrigin: b\r\n\r\n",
    HANDSHAKE + "Sec-WebSocket-Protocol: chat\r\n\r\n",
    HANDSHAKE + "Transfer-Encoding: chunked\r\n\r\n",
    HANDSHAKE + "Bad Name: x\r\n\r\n",
    HANDSHAKE + " folded\r\n\r\n",
    HANDSHAKE + "X: a\x01b\r\n\r\n",
])
def test_the_quick_handshake_leaves_anything_unusual_to_websockets(request_text):
    assert _quick_upgrade(request_text.encode("latin-1")) is None


async def test_a_handshake_in_pieces_and_a_wrong_path_are_answered(node, users):
    alice = await users("alice")
    host, port = node.ws_url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    request = HANDSHAKE.encode() + b"\r\n"
    await stream.send_all(request[:40])
    await trio.testing.wait_all_tasks_blocked(cushion=0.01)  # the node has read the first piece and waits
    await stream.send_all(request[40:])
    client = RawClient(stream)
    with trio.fail_after(5):
        assert (await client._read_until(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    await stream.send_all(client_frame(0x1, orjson.dumps({"type": "hello", "token": alice.token})))
    frame = orjson.loads(await client.read_until_opcode(0x1))
    assert (frame[0] if isinstance(frame, list) else frame)["type"] == "welcome"
    await stream.aclose()
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(request.replace(b"/ws?v=1", b"/elsewhere"))
    with trio.fail_after(5):
        assert (await RawClient(stream)._read_until(b"\r\n\r\n")).startswith(b"HTTP/1.1 404")
    await stream.aclose()
