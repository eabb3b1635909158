"""Quotas: what one user may keep and upload, a disk-space floor that stops uploads (not
chat), and a per-user message rate over all their devices (docs/media.md, "Quotas";
docs/protocol.md, "Frames")."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import httpx
import pytest
import trio
import trio.lowlevel
from conftest import make_config, new_user, running_node

from node.client import ClientError
from node.plugins.media.service import now_ms

KB = 1000


def text_file(size: int, fill: bytes = b"a") -> bytes:
    return fill * size  # plain text: the file category


def media_plugin(node):
    return node.plugins.pm.get_plugin("media")


async def kept(node) -> int:
    return await media_plugin(node).service.records.items.count()


def temp_files(node) -> list[str]:
    return sorted(p.name for p in (node.config.data_dir / "media" / "tmp").iterdir())


def free_bytes(path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


async def chunks(data: bytes, size: int = 64 * KB):
    """The body without a Content-Length (chunked), as a client that does not say its size."""
    for start in range(0, len(data), size):
        yield data[start:start + size]
        await trio.lowlevel.checkpoint()


async def refused(coro) -> ClientError:
    with pytest.raises(ClientError) as caught:
        await coro
    return caught.value


async def test_what_a_user_keeps_is_bounded_and_freed_by_collection(tmp_path):
    """The attack: one account uploads never-sent files until the disk is full."""
    config = make_config(tmp_path, plugins={"media": {"max_user_bytes": 1000 * KB, "user_upload_bytes_per_hour": 0}})
    async with running_node(config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        first = await alice.upload(text_file(600 * KB), name="a.txt")
        # declared too big: refused before the body is stored; by size or streamed, the same
        error = await refused(alice.upload(text_file(600 * KB, b"b"), name="b.txt"))
        assert (error.code, error.status) == ("quota_exceeded", 413)
        error = await refused(alice.upload(chunks(text_file(600 * KB, b"c")), name="c.txt"))
        assert error.code == "quota_exceeded"
        assert await kept(node) == 1 and temp_files(node) == []
        # the quota is per user
        await bob.upload(text_file(600 * KB, b"d"), name="d.txt")
        # two at once cannot pass it together: of 2 x 300 KB (on top of 600), one is refused
        outcomes = []

        async def upload(fill: bytes) -> None:
            try:
                outcomes.append(await alice.upload(chunks(text_file(300 * KB, fill), 16 * KB), name="x.txt"))
            except ClientError as exc:
                outcomes.append(exc.code)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(upload, b"e")
            nursery.start_soon(upload, b"f")
        assert sorted(map(str, outcomes)).count("quota_exceeded") == 1, outcomes
        assert await media_plugin(node).quotas.usage(int(alice.user["id"])) == (900 * KB, 2)
        # never sent: collected after gc_grace, and the room is alice's again
        await media_plugin(node).collect_garbage(now=now_ms() + 2 * 86_400_000)
        assert await media_plugin(node).quotas.usage(int(alice.user["id"])) == (0, 0)
        again = await alice.upload(text_file(900 * KB, b"g"), name="g.txt")
        assert again["id"] != first["id"]
        assert media_plugin(node).statistics()["refused_uploads"]["quota"] >= 3
        for client in (alice, bob):
            await client.aclose()


async def test_the_upload_rate_is_per_user(tmp_path):
    config = make_config(tmp_path, plugins={"media": {"user_upload_bytes_per_hour": 1000 * KB, "max_user_bytes": 0}})
    async with running_node(config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        await alice.upload(text_file(600 * KB), name="a.txt")
        response = await alice._http.post("/api/media", params={"name": "b.txt"}, content=text_file(600 * KB, b"b"),
                                          headers={"Authorization": f"Bearer {alice.token}"})
        assert (response.status_code, response.json()["error"]["code"]) == (429, "rate_limited")
        # 200 KB short at 1000 KB an hour: 720 s, give or take the time the first upload took
        assert 700 <= int(response.headers["Retry-After"]) <= 721, response.headers
        response = await alice._http.post("/api/media", params={"name": "c.txt"},  # no Content-Length
                                          content=chunks(text_file(600 * KB, b"c")),
                                          headers={"Authorization": f"Bearer {alice.token}"})
        assert (response.status_code, response.json()["error"]["code"]) == (429, "rate_limited")
        assert "Retry-After" not in response.headers  # refused as it arrived: its size is not known
        assert await kept(node) == 1 and temp_files(node) == []
        await bob.upload(text_file(600 * KB, b"d"), name="d.txt")  # bob has a budget of his own
        assert media_plugin(node).statistics()["refused_uploads"]["rate"] == 2
        for client in (alice, bob):
            await client.aclose()


async def test_below_the_disk_floor_uploads_stop_and_chat_goes_on(tmp_path):
    config = make_config(tmp_path, plugins={"media": {"min_free_disk_bytes": free_bytes(tmp_path) + 2**40}})
    async with running_node(config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        error = await refused(alice.upload(text_file(10 * KB), name="a.txt"))
        assert (error.code, error.status) == ("storage_full", 507)
        assert "messages still work" in error.message
        assert await kept(node) == 0 and temp_files(node) == []
        async with alice.connect() as a, bob.connect() as b:
            ack = await a.send_text(chat["id"], "still here")
            assert (await b.wait_for("message", seq=ack["seq"]))["text"] == "still here"
        assert media_plugin(node).statistics()["refused_uploads"]["disk"] == 1
        for client in (alice, bob):
            await client.aclose()


@pytest.fixture
def quiet_disk():
    """A folder on a RAM filesystem: its free space moves only with what is written there
    (a disk's moves with every other program's files, a database's logs among them)."""
    if not os.path.isdir("/dev/shm") or os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize < 2**30:
        pytest.skip("needs a tmpfs at /dev/shm with 1 GiB free")
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="chatnode-test-") as path:
        yield Path(path)


async def test_an_upload_that_would_cross_the_disk_floor_is_refused_before_it_is_stored(tmp_path, quiet_disk):
    """The floor 64 MiB below what is free: a small upload passes, one that says it brings
    96 MiB is refused from its Content-Length (and what arrives is thrown away)."""
    data_dir = quiet_disk / "data"
    data_dir.mkdir()
    config = make_config(tmp_path, node={"data_dir": str(data_dir)},
                         plugins={"media": {"min_free_disk_bytes": free_bytes(data_dir) - 64 * 2**20,
                                            "max_user_bytes": 0, "user_upload_bytes_per_hour": 0}})
    async with running_node(config) as node:
        alice = await new_user(node, "alice")
        await alice.upload(text_file(10 * KB), name="small.txt")
        big = text_file(96 * 2**20, b"z")
        async with httpx.AsyncClient(base_url=node.http_url, timeout=60) as http:
            response = await http.post("/api/media", content=big, headers={"Authorization": f"Bearer {alice.token}"})
        assert response.status_code == 507 and response.json()["error"]["code"] == "storage_full"
        assert await kept(node) == 1 and temp_files(node) == []
        await alice.aclose()


async def test_a_users_messages_are_rate_limited_over_all_their_devices(tmp_path):
    """The per-connection frame rate allows thousands of sends per second per device; a user's
    sends together are held to limits.user_messages_per_second (burst user_message_burst),
    and reconnecting refills nothing."""
    config = make_config(tmp_path, limits={"user_messages_per_second": 0.01, "user_message_burst": 5})
    async with running_node(config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as one, alice.connect() as two:
            sent, limited = [], []
            for i in range(8):
                conn = one if i % 2 else two
                try:
                    sent.append(await conn.send_text(chat["id"], f"m{i}"))
                except ClientError as exc:
                    limited.append(exc.code)
            assert len(sent) == 5 and limited == ["rate_limited"] * 3
        async with alice.connect() as again:  # a new connection has no new budget
            error = await refused(again.send_text(chat["id"], "more"))
            assert error.code == "rate_limited"
        async with bob.connect() as b:  # bob's budget is his own
            await b.send_text(chat["id"], "hi alice")
        assert [m["text"] for m in await bob.history(chat["id"])] == [f"m{i}" for i in range(5)] + ["hi alice"]
        for client in (alice, bob):
            await client.aclose()
