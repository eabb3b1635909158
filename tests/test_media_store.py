"""Media on an S3-compatible object store (SeaweedFS from PyPI, tests/s3server.py), and what
only a store shared by several nodes needs: any node serves any upload, collection on
several nodes at once, uploads whose node dies, a store that goes away mid-download,
memory that stays flat for a 200 MB upload, and `chatnode media copy`.

The general media behaviour (types, limits, images, ranges, access, collection) is in
tests/test_media.py, which runs on both stores."""

from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
from conftest import PASSWORD, make_config, new_user, running_node, serving, started_together, storage_toml
from PIL import Image
from ports import free_port
from s3server import S3Server

from node.client import ChatClient
from node.config import load_config
from node.plugins.media import records
from node.plugins.media.service import DOOM_LINGER, DOOM_WINDOW, now_ms
from node.testing import wait_until

MIB = 1024 * 1024


def png(width: int = 64, height: int = 48, color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def wav_header(data_bytes: int, rate: int = 48000) -> bytes:
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 2, rate, rate * 4, 4, 16)
            + b"data" + struct.pack("<I", data_bytes))


def plugin(node):
    return node.plugins.pm.get_plugin("media")


def s3_media(server: S3Server, prefix: str, **extra) -> dict:
    return {"store": "s3", "s3": server.settings(prefix, **extra.pop("s3", {})), **extra}


# -- two nodes, one database, one bucket ------------------------------------------------------


@pytest.mark.engine("postgresql")
async def test_a_photo_uploaded_through_one_node_is_downloaded_with_range_through_another(
        tmp_path, pg_dsn, s3_server):
    prefix = s3_server.new_prefix()

    def config(name: str, node_id: int):
        return make_config(tmp_path / name, node={"id": node_id, "name": name},
                           storage={"engine": "postgresql", "dsn": pg_dsn},
                           plugins={"media": s3_media(s3_server, prefix)})

    async with started_together([config("a", 1), config("b", 2)]) as (a, b):
        alice, bob = await new_user(a, "alice"), await new_user(a, "bob")
        bob_on_b = ChatClient(b.http_url)
        await bob_on_b.login("bob", PASSWORD)
        chat = await alice.open_direct(username="bob")
        with trio.fail_after(30):
            media = await alice.upload(png(), name="red.png")
            async with alice.connect() as conn:
                await conn.send_text(chat["id"], "look", kind="image", media=media["id"])
            whole = await bob_on_b.fetch_media(media["id"])
            assert whole.status_code == 200 and len(whole.content) == media["size"]
            assert Image.open(io.BytesIO(whole.content)).size == (64, 48)
            part = await bob_on_b.fetch_media(media["id"], headers={"Range": "bytes=10-29"})
            assert part.status_code == 206 and part.content == whole.content[10:30]
            assert part.headers["content-range"] == f"bytes 10-29/{media['size']}"
            assert part.headers["etag"] == whole.headers["etag"]
            cached = await bob_on_b.fetch_media(media["id"], headers={"If-None-Match": whole.headers["etag"]})
            assert cached.status_code == 304
            assert (await bob_on_b.fetch_media(media["id"], thumbnail=True)).status_code == 200
            # a signed URL made by node A works on node B: they share the signing key
            urls = await alice.signed_urls(media["id"])
            async with httpx.AsyncClient(base_url=b.http_url) as anonymous:
                signed = await anonymous.get(urls["url"])
            assert signed.status_code == 200 and signed.content == whole.content
            # both nodes collect at once: a message still carries it, so nothing goes
            far = now_ms() + 2 * 86_400_000
            stats = await asyncio_gather(plugin(a).collect_garbage(far, sweep=True),
                                         plugin(b).collect_garbage(far, sweep=True))
            assert all(s["items"] == 0 and s["files"] == 0 for s in stats), stats
            assert (await bob_on_b.fetch_media(media["id"])).content == whole.content
        for client in (alice, bob, bob_on_b):
            await client.aclose()


async def asyncio_gather(*awaitables):
    """Run awaitables at the same time; their results in order."""
    results: list = [None] * len(awaitables)

    async def run(i, awaitable):
        results[i] = await awaitable

    async with trio.open_nursery() as nursery:
        for i, awaitable in enumerate(awaitables):
            nursery.start_soon(run, i, awaitable)
    return results


@pytest.mark.engine("postgresql")
async def test_only_one_node_takes_the_collection_lease(tmp_path, pg_dsn, s3_server):
    prefix = s3_server.new_prefix()
    configs = [make_config(tmp_path / f"n{i}", node={"id": i, "name": f"n{i}"},
                           storage={"engine": "postgresql", "dsn": pg_dsn},
                           plugins={"media": s3_media(s3_server, prefix, gc_interval=3600.0)}) for i in (1, 2, 3)]
    async with started_together(configs) as nodes:
        with trio.fail_after(20):
            now = now_ms()
            took = await asyncio_gather(*(plugin(n).service.take_lease(now) for n in nodes))
            assert sum(took) == 1, took  # (the node that took it at start-up, or one of the three)
            holder = nodes[took.index(True)]
            assert await plugin(holder).service.take_lease(now + 1000)  # renewed
            assert not any([await plugin(n).service.take_lease(now + 2000) for n in nodes if n is not holder])
            # an expired lease is taken over
            later = now + 4 * 3600 * 1000
            other = next(n for n in nodes if n is not holder)
            assert await plugin(other).service.take_lease(later)


async def test_an_upload_that_races_a_deletion_of_its_content_installs_it_again(tmp_path, s3_server):
    """The collector on another node removed the same content at the moment this upload
    reused it (its doom says so): the upload puts the bytes back from its staged copy."""
    config = make_config(tmp_path, plugins={"media": s3_media(s3_server, s3_server.new_prefix())})
    async with running_node(config) as node:
        alice = await new_user(node, "alice")
        service = plugin(node).service
        with trio.fail_after(20):
            data = wav_header(1000) + os.urandom(1000)
            first = await alice.upload(data)
            sha = (await service.get(int(first["id"])))["sha256"]
            # another node's collector: it noted the deletion, found no claim, deleted
            await service.store.remove(sha)
            batch = service.records.store.batch()
            key = records.content_target(sha) + records.u64(99) + records.u64(now_ms() - DOOM_WINDOW)
            batch.put(records.DOOMS, key, records.DONE + records.u64(now_ms()))
            await service.records.store.write(batch)
            second = await alice.upload(data)  # reuses the content (a refs row exists) ...
            assert service.stats["reinstalled"] == 1  # ... sees the doom, installs it again
            assert await alice.download(second["id"]) == data
            assert await alice.download(first["id"]) == data
        await alice.aclose()


async def test_a_send_of_an_item_being_deleted_is_refused(tmp_path, s3_server):
    config = make_config(tmp_path, plugins={"media": s3_media(s3_server, s3_server.new_prefix())})
    async with running_node(config) as node:
        alice, _ = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        service = plugin(node).service
        with trio.fail_after(20):
            media = await alice.upload(png())
            media_id = int(media["id"])
            # a collector elsewhere is deleting it: its doom is written, its deletion under way
            key = records.item_target(media_id) + records.u64(99) + records.u64(now_ms())
            batch = service.records.store.batch()
            batch.put(records.DOOMS, key, records.DELETING + records.u64(now_ms()))
            await service.records.store.write(batch)
            async with alice.connect() as conn, trio.open_nursery() as nursery:
                outcome = {}

                async def send():
                    try:
                        await conn.send_text(chat["id"], None, kind="image", media=media["id"])
                        outcome["sent"] = True
                    except Exception as exc:
                        outcome["error"] = exc

                nursery.start_soon(send)
                await wait_until(lambda: service.records.pending_of(media_id))  # the claim is written first
                # ... the collector finishes: the item is gone, its doom done
                batch = service.records.store.batch()
                batch.delete(records.ITEMS, records.u64(media_id))
                batch.put(records.DOOMS, key, records.DONE + records.u64(now_ms()))
                await service.records.store.write(batch)
            assert "error" in outcome, (outcome, await service.records.dooms_of(records.item_target(media_id)), await service.get(media_id))
            assert outcome["error"].code == "not_found"
            assert await service.records.pending_of(media_id) == []
        await alice.aclose()


async def test_forgetting_old_dooms_keeps_every_recent_one(tmp_path):
    """Doom keys end with (node, start) after targets of different lengths: the sweep
    that forgets dooms past DOOM_LINGER must read the start there, or it forgets a
    deletion under way on another node, and a send of that item gets through."""
    async with running_node(make_config(tmp_path)) as node:
        service = plugin(node).service
        now = now_ms()
        recent_item = records.item_target(7) + records.u64(99) + records.u64(now)
        recent_content = records.content_target("ab" * 32) + records.u64(98) + records.u64(now - 1000)
        old = records.item_target(8) + records.u64(99) + records.u64(now - DOOM_LINGER - 1000)
        batch = service.records.store.batch()
        batch.put(records.DOOMS, recent_item, records.DELETING + records.u64(now))
        batch.put(records.DOOMS, recent_content, records.DONE + records.u64(now))
        batch.put(records.DOOMS, old, records.DONE + records.u64(now - DOOM_LINGER))
        await service.records.store.write(batch)
        await service._forget_old_dooms(now_ms())
        left = {key: (node_id, started) for key, node_id, started, _, _ in await service.records.dooms_of(b"")}
        assert left == {recent_item: (99, now), recent_content: (98, now - 1000)}


async def test_presigned_downloads_send_clients_to_the_store(tmp_path, s3_server):
    media = s3_media(s3_server, s3_server.new_prefix(), s3={"presigned_downloads": True, "presign_ttl": 60.0})
    async with running_node(make_config(tmp_path, plugins={"media": media})) as node:
        alice = await new_user(node, "alice")
        with trio.fail_after(20):
            data = wav_header(5000) + os.urandom(5000)
            uploaded = await alice.upload(data, name="clip.wav")
            answer = await alice.fetch_media(uploaded["id"])
            assert answer.status_code == 302
            location = answer.headers["location"]
            assert location.startswith(s3_server.endpoint) and "Expires=" in location
            async with httpx.AsyncClient() as direct:  # no token: the URL itself is the permission
                whole = await direct.get(location)
                part = await direct.get(location, headers={"Range": "bytes=0-43"})
            assert whole.status_code == 200 and whole.content == data
            assert whole.headers["content-type"] == "audio/wav"
            assert part.status_code == 206 and part.content == data[:44]
            stranger = await new_user(node, "mallory")
            assert (await stranger.fetch_media(uploaded["id"])).status_code == 403  # authorized as before
            await stranger.aclose()
        await alice.aclose()


# -- a node as a process: memory, and a kill mid-upload ------------------------------------------



def write_node_config(folder: Path, media_toml: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    path = folder / "config.toml"
    path.write_text(f"""
[node]
data_dir = "{data}"
[http]
host = "127.0.0.1"
port = {free_port()}
[websocket]
host = "127.0.0.1"
port = {free_port()}
[accounts]
argon2_time_cost = 1
argon2_memory_kib = 64
{storage_toml(data)}
[plugins.media]
max_audio_bytes = {300 * MIB}
{media_toml}
""")
    return path


def s3_toml(server: S3Server, prefix: str) -> str:
    lines = ['store = "s3"', "[plugins.media.s3]"]
    for key, value in server.settings(prefix).items():
        lines.append(f"{key} = {value!r}".replace("'", '"').replace("True", "true"))
    return "\n".join(lines)


@asynccontextmanager
async def node_process(config_path: Path):
    """`python -m node serve` on a config; yields (process, base URL); stopped by its PID."""
    config = load_config(config_path)
    proc = subprocess.Popen([sys.executable, "-m", "node", "serve", "--config", str(config_path),
                             "--log-level", "WARNING"], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{config.http.port}"
    try:
        await wait_until(lambda: serving(url, proc), 60, interval=0.05)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class PeakRss:
    """The peak VmRSS of a process, sampled every 5 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.005)  # the sampling rate

    def __enter__(self):
        self.peak = rss_kib(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def wav_stream(size: int, block: bytes):
    async def body():
        yield wav_header(size - 44)
        sent = 44
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            sent += len(piece)
            yield piece

    return body()


@pytest.mark.engine("lmdb")
@pytest.mark.parametrize("store", ["local", "s3"])
async def test_a_200_mb_upload_keeps_the_node_memory_flat(tmp_path, s3_server, store):
    prefix = s3_server.new_prefix()
    config_path = write_node_config(tmp_path, s3_toml(s3_server, prefix) if store == "s3" else "")
    size = 200 * 1000 * 1000
    async with node_process(config_path) as (proc, url):
        async with ChatClient(url, timeout=300) as client:
            await client.register("alice", PASSWORD)
            await client.login("alice", PASSWORD)
            await client.upload(wav_header(100_000) + os.urandom(100_000))  # warm up the upload path
            before = rss_kib(proc.pid)
            with trio.fail_after(240), PeakRss(proc.pid) as sampled:
                media = await client.upload(wav_stream(size, os.urandom(MIB)))
            assert media["size"] == size
            grown = (sampled.peak - before) / 1024
            print(f"{store}: node RSS before {before / 1024:.0f} MiB, peak while uploading 200 MB "
                  f"{sampled.peak / 1024:.0f} MiB (+{grown:.0f} MiB)")
            assert grown < 64, f"the node grew by {grown:.0f} MiB during a 200 MB upload"
            head = await client.fetch_media(media["id"], headers={"Range": "bytes=0-43"})
            assert head.status_code == 206 and head.content == wav_header(size - 44)


@pytest.mark.engine("lmdb")
async def test_killing_the_node_mid_upload_leaves_no_orphan(tmp_path, s3_server):
    prefix = s3_server.new_prefix()
    config_path = write_node_config(tmp_path, s3_toml(s3_server, prefix))
    size = 100 * 1000 * 1000
    block = os.urandom(MIB)
    async with node_process(config_path) as (proc, url):
        async with ChatClient(url, timeout=60) as client:
            await client.register("alice", PASSWORD)
            await client.login("alice", PASSWORD)

            async def slow_body():
                yield wav_header(size - 44)
                for _ in range(size // MIB):
                    yield block
                    if s3_server.multipart_uploads(prefix):  # the first part is in the store ...
                        proc.kill()  # ... and the node dies
                        proc.wait()
                        return

            with trio.fail_after(60), pytest.raises(Exception):  # noqa: B017 (whichever error the transport gives)
                await client.upload(slow_body())
    assert proc.returncode == -signal.SIGKILL
    assert s3_server.multipart_uploads(prefix)  # what the dead node left
    # the node comes back; its start-up drops its own unfinished uploads, a collection the rest
    async with running_node(load_config(config_path)) as node:
        with trio.fail_after(30):
            stats = await plugin(node).collect_garbage(now_ms() + 2 * 86_400_000, sweep=True)
            assert stats["items"] == 0
            assert s3_server.multipart_uploads(prefix) == []
            assert s3_server.keys(prefix) == []
            assert await plugin(node).service.records.items.count() == 0


# -- the store goes away mid-download ---------------------------------------------------------


@pytest.mark.engine("lmdb")
async def test_the_store_going_away_mid_download_is_a_clean_error(tmp_path):
    with S3Server() as private:
        private.client().create_bucket(Bucket=S3Server.BUCKET)
        config = make_config(tmp_path, plugins={"media": s3_media(private, "p/", s3={"timeout": 2.0, "attempts": 2})})
        async with running_node(config) as node:
            alice = await new_user(node, "alice")
            size = 40 * MIB
            data = os.urandom(MIB)
            with trio.fail_after(60):
                media = await alice.upload(wav_stream(size, data))
                received = 0
                with pytest.raises(httpx.HTTPError):  # the response ends early: not a hang
                    async with alice._http.stream("GET", f"/api/media/{media['id']}",
                                                  headers=alice._bearer()) as response:
                        assert response.status_code == 200
                        async for chunk in response.aiter_raw():
                            if received == 0:
                                private.kill()  # the store dies after the first bytes were sent
                            received += len(chunk)
                assert 0 < received < size
                down = await alice.fetch_media(media["id"])  # while it is down: 503, promptly
                assert down.status_code == 503 and down.json()["error"]["code"] == "unavailable"
            private.resume()

            def fetch():
                return alice.fetch_media(media["id"], headers={"Range": f"bytes={MIB + 44}-{MIB + 53}"})

            async def served_again() -> bool:  # once the store serves its volumes again, so does the node
                return (await fetch()).status_code != 503

            await wait_until(served_again, 60, interval=0.2)
            again = await fetch()
            assert again.status_code == 206 and again.content == data[:10]
            await alice.aclose()


# -- chatnode media copy ----------------------------------------------------------------------


@pytest.mark.engine("lmdb")
async def test_media_copy_moves_local_media_into_the_store(tmp_path, s3_server):
    from node.cli import main

    local = write_node_config(tmp_path / "single", "")
    config = load_config(local)
    async with running_node(config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        clip = wav_header(20_000) + os.urandom(20_000)
        with trio.fail_after(30):
            photo = await alice.upload(png())
            audio = await alice.upload(clip)
            async with alice.connect() as conn:
                await conn.send_text(chat["id"], None, kind="image", media=photo["id"])
                await conn.send_text(chat["id"], None, kind="audio", media=audio["id"])
            photo_bytes = await bob.download(photo["id"])
        await alice.aclose()
        await bob.aclose()
    prefix = s3_server.new_prefix()
    # the operator switches the config to the object store ...
    head = local.read_text().split("[plugins.media]")[0]
    local.write_text(head + f"[plugins.media]\nmax_audio_bytes = {300 * MIB}\n" + s3_toml(s3_server, prefix) + "\n")
    out = tmp_path / "copy.log"

    def copy() -> int:
        import contextlib

        with open(out, "w") as log, contextlib.redirect_stdout(log):
            return main(["media", "copy", "--config", str(local)])

    assert await trio.to_thread.run_sync(copy) == 0  # ... and copies
    log = out.read_text()
    assert "done: 3 copied, 0 already there, 0 failed" in log, log  # two contents and a thumbnail
    assert "verified" in log
    keys = s3_server.keys(prefix)
    assert len(keys) == 3
    # interrupted? run it again: only what is missing is copied
    s3_server.client().delete_object(Bucket=S3Server.BUCKET, Key=keys[0])
    assert await trio.to_thread.run_sync(copy) == 0
    assert "done: 1 copied, 2 already there, 0 failed" in out.read_text()
    async with running_node(load_config(local)) as node:  # the node now serves from the store
        assert plugin(node).service.store.kind == "s3"
        bob = ChatClient(node.http_url)
        await bob.login("bob", PASSWORD)
        with trio.fail_after(30):
            assert await bob.download(photo["id"]) == photo_bytes
            assert await bob.download(audio["id"]) == clip
            assert (await bob.fetch_media(photo["id"], thumbnail=True)).status_code == 200
        await bob.aclose()
