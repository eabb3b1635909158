"""The media plugin end to end: a real node, real HTTP, real files made here (Pillow, wave)
or kept in tests/data (tiny.mp4, tiny.webm, voice-chromium.webm, voice.ogg; see
tests/data/README.md).

Every test runs on both content stores (`media_store`): the local directory and an
S3-compatible object store (a private SeaweedFS, tests/s3server.py), each on both
storage engines. Tests of one store's own behaviour are marked `store("local")`."""

from __future__ import annotations

import hashlib
import io
import math
import os
import random
import struct
import wave
from functools import partial
from pathlib import Path

import orjson
import pytest
import trio
from conftest import make_config, new_user, running_node
from PIL import Image

from node import ChatError, hookimpl, preflight
from node.app import serve_node
from node.client import ChatClient, ClientError
from node.plugins.media import records
from node.plugins.media.service import now_ms
from node.testing import wait_until

DATA = Path(__file__).resolve().parent / "data"
SNIFF = 8192
GPS_IFD = 0x8825
ORIENTATION = 0x0112


# -- test files ---------------------------------------------------------------------------


def png(width: int = 32, height: int = 24, color: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def photo_with_exif() -> bytes:
    """A 40x20 JPEG, left half red and right half blue, that EXIF says to rotate 90 degrees
    clockwise (orientation 6), with a GPS position and a camera serial number."""
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    exif[0x010F] = "SecretCam"
    exif[0xA431] = "SERIAL-12345"
    gps = exif.get_ifd(GPS_IFD)
    gps[1], gps[2], gps[3], gps[4] = "N", (52.0, 31.0, 12.0), "E", (13.0, 24.0, 0.0)
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, quality=95)
    return out.getvalue()


def wav(seconds: float = 1.0, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 10))) for i in range(int(seconds * rate))))
    return out.getvalue()


# -- helpers ------------------------------------------------------------------------------


STORES = ("local", "s3")
_prefixes: dict[str, str] = {}  # a node's data dir -> its key prefix (a restarted node finds its media)
_store: dict[str, object] = {"name": "local", "server": None}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "media_store" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("store")
        metafunc.parametrize("media_store", marker.args if marker else STORES, indirect=True, scope="module")


@pytest.fixture(scope="module")
def media_store(request: pytest.FixtureRequest):
    """The content store of this module's tests: "local" or "s3" (then the server)."""
    server = request.getfixturevalue("s3_server") if request.param == "s3" else None
    _store.update(name=request.param, server=server)
    yield request.param
    _store.update(name="local", server=None)


@pytest.fixture(autouse=True)
def store_kind(media_store: str) -> str:
    return media_store


def store_section(tmp_path: Path) -> dict:
    """The [plugins.media] settings that choose the store in use, for a node under tmp_path."""
    if _store["name"] != "s3":
        return {}
    server = _store["server"]
    key = str(tmp_path)
    if key not in _prefixes:
        _prefixes[key] = server.new_prefix()
    return {"store": "s3", "s3": server.settings(_prefixes[key])}


def media_config(tmp_path: Path, **media):
    return make_config(tmp_path, plugins={"media": {**store_section(tmp_path), **media}})


def plugin(node):
    return node.plugins.pm.get_plugin("media")


def media_root(node) -> Path:
    return node.config.data_dir / "media"


def content_store(node):
    return plugin(node).service.store


async def stored_files(node) -> list[str]:
    """The SHA-256 of every content in the node's store."""
    return sorted(sha for sha, _ in await content_store(node).list_content())


async def temp_files(node) -> list[str]:
    """Everything staged: local temp files, and the store's staged objects and multipart uploads."""
    out = sorted(p.name for p in (media_root(node) / "tmp").iterdir())
    store = content_store(node)
    if store.kind == "s3":
        staged = await store.staging()
        out += staged["objects"] + staged["multipart"]
    return out


def media_records(node) -> records.Records:
    return node.plugins.pm.get_plugin("media").service.records


async def item_count(node) -> int:
    return await media_records(node).items.count()


async def shares_of(node, media_id: int):
    return await media_records(node).shares_of(media_id)


async def no_shares(node, media_id: int) -> bool:
    return not await shares_of(node, media_id)


async def has_temp_files(node) -> bool:
    return bool(await temp_files(node))


async def no_temp_files(node) -> bool:
    return not await temp_files(node)


async def assert_nothing_left(node, items_before: int = 0) -> None:
    assert await temp_files(node) == []
    assert await item_count(node) == items_before


async def send_media(conn, chat_id: str, media_id: str, kind: str, caption: str | None = None, **extra):
    return await conn.send_text(chat_id, caption, kind=kind, media=media_id, **extra)


@pytest.fixture
async def node(tmp_path):
    async with running_node(media_config(tmp_path, gc_grace=0.0)) as n:
        yield n


@pytest.fixture
async def trio_users(node):
    made: list[ChatClient] = []

    async def make(name: str) -> ChatClient:
        client = await new_user(node, name)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


# -- images, audio, video: upload, send, download -----------------------------------------------


async def test_photo_is_stored_without_exif_upright_with_a_thumbnail(node, trio_users):
    alice, bob = await trio_users("alice"), await trio_users("bob")
    chat = await alice.open_direct(username="bob")
    with trio.fail_after(20):
        media = await alice.upload(photo_with_exif(), name="holiday.jpg")
        assert media["mime"] == "image/jpeg" and media["thumbnail"] is True and media["name"] == "holiday.jpg"
        assert (media["width"], media["height"]) == (20, 40)  # the orientation was applied
        async with alice.connect() as a, bob.connect() as b:
            ack = await send_media(a, chat["id"], media["id"], "image", "look!")
            event = await b.wait_for("message", seq=ack["seq"])
        assert event["kind"] == "image" and event["text"] == "look!"
        assert event["media"] == media  # the id was replaced by the metadata
        data = await bob.download(media["id"])
        assert len(data) == media["size"]
        assert b"SecretCam" not in data and b"SERIAL-12345" not in data
        image = Image.open(io.BytesIO(data))
        exif = image.getexif()
        assert GPS_IFD not in exif and not exif.get_ifd(GPS_IFD) and ORIENTATION not in exif
        assert image.size == (20, 40)
        top, bottom = image.convert("RGB").getpixel((10, 8)), image.convert("RGB").getpixel((10, 32))
        assert top[0] > 200 and top[2] < 60, top  # red on top: rotated clockwise, as the tag said
        assert bottom[2] > 200 and bottom[0] < 60, bottom
        thumb = Image.open(io.BytesIO(await bob.download(media["id"], thumbnail=True)))
        assert thumb.format == "JPEG" and max(thumb.size) <= 320 and not thumb.getexif()
        history = await bob.history(chat["id"])
        assert history[-1]["media"]["id"] == media["id"]


async def test_audio_clip_with_duration_and_range_requests(node, trio_users):
    alice, bob = await trio_users("alice"), await trio_users("bob")
    chat = await alice.open_direct(username="bob")
    clip = wav(1.0)
    with trio.fail_after(20):
        media = await alice.upload(clip, name="voice.wav")
        assert media["mime"] == "audio/wav" and media["duration"] == pytest.approx(1.0, abs=0.01)
        assert media["size"] == len(clip) and media["thumbnail"] is False
        async with alice.connect() as a:
            await send_media(a, chat["id"], media["id"], "audio")
        assert await bob.download(media["id"]) == clip
        size = len(clip)

        first = await bob.fetch_media(media["id"], headers={"Range": "bytes=0-99"})
        assert first.status_code == 206 and first.content == clip[:100]
        assert first.headers["content-range"] == f"bytes 0-99/{size}"
        assert first.headers["accept-ranges"] == "bytes"
        tail = await bob.fetch_media(media["id"], headers={"Range": "bytes=-100"})
        assert tail.status_code == 206 and tail.content == clip[-100:]
        assert tail.headers["content-range"] == f"bytes {size - 100}-{size - 1}/{size}"
        rest = await bob.fetch_media(media["id"], headers={"Range": f"bytes={size - 10}-"})
        assert rest.status_code == 206 and rest.content == clip[-10:]
        beyond = await bob.fetch_media(media["id"], headers={"Range": f"bytes={size - 1}-{size + 500}"})
        assert beyond.status_code == 206 and beyond.content == clip[-1:]
        unsatisfiable = await bob.fetch_media(media["id"], headers={"Range": f"bytes={size}-"})
        assert unsatisfiable.status_code == 416 and unsatisfiable.headers["content-range"] == f"bytes */{size}"
        several = await bob.fetch_media(media["id"], headers={"Range": "bytes=0-1,5-6"})
        assert several.status_code == 200 and several.content == clip

        whole = await bob.fetch_media(media["id"])
        etag = whole.headers["etag"]
        assert etag.strip('"') == hashlib.sha256(clip).hexdigest()
        assert "private" in whole.headers["cache-control"] and "immutable" in whole.headers["cache-control"]
        assert whole.headers["content-type"] == "audio/wav"
        cached = await bob.fetch_media(media["id"], headers={"If-None-Match": etag})
        assert cached.status_code == 304 and cached.content == b""
        stale = await bob.fetch_media(media["id"], headers={"Range": "bytes=0-9", "If-Range": '"old"'})
        assert stale.status_code == 200 and stale.content == clip
        fresh = await bob.fetch_media(media["id"], headers={"Range": "bytes=0-9", "If-Range": etag})
        assert fresh.status_code == 206 and fresh.content == clip[:10]


async def test_video_upload_send_and_seek(node, trio_users):
    alice, bob = await trio_users("alice"), await trio_users("bob")
    chat = await alice.open_direct(username="bob")
    video = (DATA / "tiny.mp4").read_bytes()
    with trio.fail_after(20):
        media = await alice.upload(video, name="clip.mp4")
        assert media["mime"] == "video/mp4"
        assert (media["width"], media["height"]) == (64, 48)
        assert media["duration"] == pytest.approx(1.0, abs=0.2)
        webm = await alice.upload((DATA / "tiny.webm").read_bytes())
        assert webm["mime"] == "video/webm"
        async with alice.connect() as a, bob.connect() as b:
            ack = await send_media(a, chat["id"], media["id"], "video", "our walk")
            assert (await b.wait_for("message", seq=ack["seq"]))["media"]["mime"] == "video/mp4"
            await send_media(a, chat["id"], webm["id"], "video")
            # a voice note recorded by a browser comes in a WebM container: fine as audio
            await send_media(a, chat["id"], webm["id"], "audio")
            with pytest.raises(ClientError) as wrong:
                await send_media(a, chat["id"], media["id"], "image")
            assert wrong.value.code == "bad_request"
            # `file` carries anything that may be uploaded
            await send_media(a, chat["id"], media["id"], "file")
        assert await bob.download(media["id"]) == video
        # what a <video> element does when seeking
        part = await bob.fetch_media(media["id"], headers={"Range": "bytes=1000-"})
        assert part.status_code == 206 and part.content == video[1000:]


async def test_voice_notes_recorded_by_browsers_are_audio(node, trio_users):
    """Chromium records Opus in WebM (no duration in its header, clusters of unknown size),
    Firefox Opus in Ogg: both are audio, with a duration, and play as audio."""
    alice, bob = await trio_users("alice"), await trio_users("bob")
    chat = await alice.open_direct(username="bob")
    with trio.fail_after(20):
        webm = await alice.upload((DATA / "voice-chromium.webm").read_bytes(), name="voice-note.webm")
        assert webm["mime"] == "audio/webm" and webm["duration"] == pytest.approx(1.5, abs=0.1)
        ogg = await alice.upload((DATA / "voice.ogg").read_bytes(), name="voice-note.ogg")
        assert ogg["mime"] == "audio/ogg" and ogg["duration"] == pytest.approx(1.0, abs=0.1)
        video = await alice.upload((DATA / "tiny.webm").read_bytes())  # a picture track: still video
        assert video["mime"] == "video/webm" and video["duration"] == pytest.approx(1.0, abs=0.1)
        async with alice.connect() as a, bob.connect() as b:
            for media in (webm, ogg):
                ack = await send_media(a, chat["id"], media["id"], "audio")
                assert (await b.wait_for("message", seq=ack["seq"]))["media"] == media
            with pytest.raises(ClientError) as wrong:
                await send_media(a, chat["id"], webm["id"], "video")
            assert wrong.value.code == "bad_request"
        response = await bob.fetch_media(webm["id"])
        assert response.headers["content-type"] == "audio/webm"
        assert response.headers["content-disposition"].startswith("inline")
        assert response.content == (DATA / "voice-chromium.webm").read_bytes()


async def test_a_config_that_does_not_list_audio_webm_takes_it_as_its_container(tmp_path):
    old_lists = {"audio_types": ["audio/mpeg", "audio/ogg"], "video_types": ["video/webm"]}
    async with running_node(media_config(tmp_path, **old_lists)) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        with trio.fail_after(20):
            media = await alice.upload((DATA / "voice-chromium.webm").read_bytes())
            assert media["mime"] == "audio/webm"
            async with alice.connect() as a:
                await send_media(a, chat["id"], media["id"], "audio")  # as before: a WebM voice note
        await alice.aclose()
        await bob.aclose()
    strict = {"audio_types": ["audio/ogg"], "video_types": ["video/mp4"]}
    async with running_node(media_config(tmp_path / "strict", **strict)) as node:
        alice = await new_user(node, "alice")
        with trio.fail_after(20), pytest.raises(ClientError) as refused:
            await alice.upload((DATA / "voice-chromium.webm").read_bytes())
        assert refused.value.code == "unsupported_media_type"
        await alice.aclose()


async def test_files_are_attachments_and_text_is_detected(node, trio_users):
    alice = await trio_users("alice")
    with trio.fail_after(10):
        media = await alice.upload("grüße, notes\n".encode() * 100, name="../../etc/notes ä.txt")
        assert media["mime"] == "text/plain" and media["name"] == "notes ä.txt"
        response = await alice.fetch_media(media["id"])
        assert response.headers["content-disposition"].startswith("attachment;")
        assert "filename*=UTF-8''notes%20%C3%A4.txt" in response.headers["content-disposition"]
        assert response.headers["x-content-type-options"] == "nosniff"
        info = await alice.media_info(media["id"])
        assert info["owner"] == alice.user["id"] and info["size"] == 1500


async def test_a_thousand_chunks_are_streamed_to_the_store(node, trio_users):
    """A streamed upload: the node writes as data arrives (a temp file, or a multipart
    upload with its first 8 MiB part, exists before the client finished) and the result is
    byte-identical."""
    alice = await trio_users("alice")
    chunk = os.urandom(16 * 1024)
    header = wav(0.01)[:44]
    seen_temp = trio.Event()

    async def body():
        yield header
        for i in range(1000):
            if i == 600:  # 9.6 MB: past the first part
                await wait_until(lambda: has_temp_files(node))
                seen_temp.set()
            yield chunk

    with trio.fail_after(30):
        media = await alice.upload(body())
    assert seen_temp.is_set()
    assert media["size"] == 44 + 1000 * len(chunk)
    data = await alice.download(media["id"])
    assert data[:44] == header and data[44:60] == chunk[:16] and len(data) == media["size"]
    assert await temp_files(node) == []


# -- who may download ---------------------------------------------------------------------


async def test_only_the_uploader_and_those_who_can_see_the_message_may_download(node, trio_users):
    alice, bob, carol, dave = [await trio_users(n) for n in ("alice", "bob", "carol", "dave")]
    group = await alice.create_group("trip", usernames=["bob"])
    with trio.fail_after(20):
        before = await alice.upload(png(color=(1, 2, 3)))
        unsent = await alice.upload(png(color=(4, 5, 6)))
        async with alice.connect() as a:
            await send_media(a, group["id"], before["id"], "image")
        await alice.add_members(group["id"], [dave.user["id"]])
        after = await alice.upload(png(color=(7, 8, 9)))
        async with alice.connect() as a:
            await send_media(a, group["id"], after["id"], "image")

        assert (await bob.fetch_media(before["id"])).status_code == 200
        assert (await bob.fetch_media(after["id"])).status_code == 200
        assert (await dave.fetch_media(after["id"])).status_code == 200
        # dave joined after `before` was shared: he never saw that message
        denied = await dave.fetch_media(before["id"])
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
        for who in (bob, carol, dave):
            assert (await who.fetch_media(unsent["id"])).status_code == 403
        assert (await carol.fetch_media(before["id"])).status_code == 403
        with pytest.raises(ClientError) as info:
            await carol.media_info(before["id"])
        assert info.value.code == "forbidden"
        assert (await carol.fetch_media(before["id"], thumbnail=True)).status_code == 403
        assert (await bob.fetch_media(before["id"], auth=False)).status_code == 401
        assert (await bob.fetch_media("123456789", auth=False)).status_code == 401  # nothing told to strangers
        assert (await bob.fetch_media("123456789")).status_code == 404
        assert (await alice.fetch_media(unsent["id"])).status_code == 200
        # bob leaves: he keeps what he saw, but nothing shared later
        await bob.leave(group["id"])
        later = await alice.upload(png(color=(9, 9, 9)))
        async with alice.connect() as a:
            await send_media(a, group["id"], later["id"], "image")
        assert (await bob.fetch_media(before["id"])).status_code == 200
        assert (await bob.fetch_media(later["id"])).status_code == 403


async def test_signed_urls_work_without_a_token_and_expire(node, trio_users):
    alice, bob, carol = await trio_users("alice"), await trio_users("bob"), await trio_users("carol")
    chat = await alice.open_direct(username="bob")
    with trio.fail_after(20):
        media = await alice.upload(photo_with_exif())
        async with alice.connect() as a:
            await send_media(a, chat["id"], media["id"], "image")
        urls = await bob.signed_urls(media["id"])
        assert urls["url"].startswith(f"/api/media/{media['id']}?") and urls["expires"] > now_ms()
        again = await bob.signed_urls(media["id"])
        assert again["url"] == urls["url"]  # stable for a while, so caches hit
        with pytest.raises(ClientError):
            await carol.signed_urls(media["id"])
        async with ChatClient(node.http_url) as anonymous:  # like an <img> tag: no token
            full = await anonymous._http.get(urls["url"])
            assert full.status_code == 200 and full.content == await alice.download(media["id"])
            thumb = await anonymous._http.get(urls["thumbnail_url"])
            assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
            ranged = await anonymous._http.get(urls["url"], headers={"Range": "bytes=0-3"})
            assert ranged.status_code == 206 and ranged.content == full.content[:4]
            tampered = urls["url"].replace(str(urls["expires"]), str(urls["expires"] + 1000))
            assert (await anonymous._http.get(tampered)).status_code == 403
            # the thumbnail's signature does not open the full image
            sig = urls["thumbnail_url"].split("sig=")[1]
            assert (await anonymous._http.get(urls["url"].split("sig=")[0] + "sig=" + sig)).status_code == 403
            signer = plugin(node).signer
            past = now_ms() - 1000
            expired = f"/api/media/{media['id']}?exp={past}&sig={signer.sign(int(media['id']), 'content', past)}"
            response = await anonymous._http.get(expired)
            assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"


# -- sending --------------------------------------------------------------------------------


async def test_sending_media_that_is_not_yours_or_does_not_exist(node, trio_users):
    alice, bob = await trio_users("alice"), await trio_users("bob")
    chat = await alice.open_direct(username="bob")
    with trio.fail_after(20):
        mine = await alice.upload(png())
        async with bob.connect() as b:
            with pytest.raises(ClientError) as stolen:
                await send_media(b, chat["id"], mine["id"], "image")
            assert stolen.value.code == "forbidden"
            with pytest.raises(ClientError) as missing:
                await send_media(b, chat["id"], "12345678901", "image")
            assert missing.value.code == "not_found"
            await b.send_text(chat["id"], "still connected")
        assert [m["kind"] for m in await alice.history(chat["id"])] == ["text"]


class Busy:
    """A gate that refuses with a documented code of its own."""

    name = "busy_gate"

    @hookimpl
    def prepare_message(self, content):
        if content.get("text") == "later":
            raise ChatError("conflict", "not now")


async def test_a_chat_error_from_a_gate_reaches_the_sender_with_its_code(tmp_path):
    async with trio.open_nursery() as nursery:
        node = await nursery.start(partial(serve_node, make_config(tmp_path), plugins=[Busy()], load_entrypoints=False))
        try:
            alice = await new_user(node, "alice")
            await new_user(node, "bob")
            chat = await alice.open_direct(username="bob")
            with trio.fail_after(10):
                async with alice.connect() as a:
                    with pytest.raises(ClientError) as refused:
                        await a.send_text(chat["id"], "later")
                    assert refused.value.code == "conflict" and refused.value.message == "not now"
                    await a.send_text(chat["id"], "now")
            assert not any(node.plugins.statistics()["failures"].values())
            await alice.aclose()
        finally:
            node.request_shutdown()


# -- rejected uploads leave nothing behind --------------------------------------------------


async def test_unsupported_types_are_refused_and_leave_nothing(node, trio_users):
    alice = await trio_users("alice")
    with trio.fail_after(10):
        for body in (b"\x7fELF\x02\x01\x01" + os.urandom(20_000), os.urandom(20_000), b"MZ" + bytes(5000)):
            with pytest.raises(ClientError) as refused:
                await alice.upload(body, name="photo.jpg")  # the name says jpg; the bytes do not
            assert refused.value.code == "unsupported_media_type" and refused.value.status == 415
        with pytest.raises(ClientError) as empty:
            await alice.upload(b"")
        assert empty.value.code == "bad_request"
        with pytest.raises(ClientError) as broken:  # a PNG signature and then garbage
            await alice.upload(b"\x89PNG\r\n\x1a\n" + os.urandom(5000))
        assert broken.value.code == "bad_request"
    await assert_nothing_left(node)
    assert await stored_files(node) == []


async def test_size_limits_per_category_leave_nothing(tmp_path):
    limits = {"max_image_bytes": 50_000, "max_audio_bytes": 50_000, "max_video_bytes": 50_000,
              "max_file_bytes": 2_000_000}
    async with running_node(media_config(tmp_path, **limits)) as node:
        alice = await new_user(node, "alice")
        with trio.fail_after(20):
            big_png = b"\x89PNG\r\n\x1a\n" + os.urandom(200_000)
            with pytest.raises(ClientError) as too_big:
                await alice.upload(big_png)
            assert too_big.value.code == "too_large" and too_big.value.status == 413

            async def streamed():  # no Content-Length: the limit is found while streaming
                for _ in range(40):
                    yield big_png[:10_000] if _ == 0 else os.urandom(10_000)

            with pytest.raises(ClientError) as streamed_too_big:
                await alice.upload(streamed())
            assert streamed_too_big.value.code == "too_large"
            # a file may be larger than an image
            assert (await alice.upload(b"%PDF-1.4\n" + os.urandom(100_000)))["mime"] == "application/pdf"
            # over every category's limit: refused on its Content-Length, before sniffing
            with pytest.raises(ClientError) as declared_too_big:
                await alice.upload(b"%PDF-1.4\n" + bytes(2_100_000))
            assert declared_too_big.value.code == "too_large"
            assert "limited to 2000000 bytes" in declared_too_big.value.message
        assert await temp_files(node) == []
        assert await item_count(node) == 1 and len(await stored_files(node)) == 1
        await alice.aclose()


async def test_too_many_pixels_are_refused(tmp_path):
    async with running_node(media_config(tmp_path, max_image_pixels=10_000)) as node:
        alice = await new_user(node, "alice")
        with trio.fail_after(10), pytest.raises(ClientError) as refused:
            await alice.upload(png(200, 100))
        assert refused.value.code == "too_large"
        await assert_nothing_left(node)
        await alice.aclose()


def gif_bomb(width: int, height: int, frames: int, white: bool = False) -> bytes:
    """A GIF whose canvas is width x height but whose frames are one pixel each: a few bytes
    per frame on disk, a whole canvas per frame once decoded (3000x3000x60: 1.4 KB).

    The pixels are black on black (every frame looks the same: costs time) or white (every
    frame differs from the one before: an encoder keeps them all, costs memory)."""
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + bytes(3) + b"\xff" * 3)
    for i in range(frames):
        out += b"\x21\xf9\x04\x00" + struct.pack("<H", 10) + b"\x00\x00"  # graphic control: 0.1 s
        out += b"\x2c" + struct.pack("<HHHHB", i % width, i // width, 1, 1, 0)  # a 1x1 image at (i, 0)
        out += b"\x02\x02\x4c\x01\x00" if white else b"\x02\x02\x44\x01\x00"  # LZW: clear, pixel, end
    return bytes(out + b"\x3b")


def rss_bytes() -> int:
    """This process's resident memory: the node runs in it."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def upload_bomb(node, bomb: bytes) -> ClientError:
    """Upload a bomb as a new user; return the refusal, after checking the node stayed small."""
    alice = await new_user(node)
    await alice.upload(png())  # warm up the upload path before measuring
    before = rss_bytes()
    with trio.fail_after(20), pytest.raises(ClientError) as refused:
        await alice.upload(bomb)
    grown = rss_bytes() - before
    assert grown < 32 * 1024 * 1024, f"the node grew by {grown >> 20} MiB"
    await assert_nothing_left(node, items_before=1)
    media = await alice.upload(png(40, 30))  # the node still processes images
    assert media["width"] == 40
    await alice.aclose()
    return refused.value


async def test_an_animated_bomb_is_refused_before_it_is_decoded(tmp_path):
    """Pixels are counted over all frames, so 60 one-pixel frames on a 3000x3000 canvas are
    540 million pixels, past the default budget of 50 million: refused at once."""
    bomb = gif_bomb(3000, 3000, 60)
    assert len(bomb) < 1500
    async with running_node(media_config(tmp_path)) as node:
        refused = await upload_bomb(node, bomb)
    assert refused.code == "too_large"
    assert "3000x3000x60" in refused.message


async def test_animations_are_limited_in_frames(tmp_path):
    async with running_node(media_config(tmp_path, max_image_frames=50)) as node:
        alice = await new_user(node)
        with trio.fail_after(10), pytest.raises(ClientError) as refused:
            await alice.upload(gif_bomb(10, 10, 51))
        assert refused.value.code == "too_large" and "limited to 50 frames" in refused.value.message
        media = await alice.upload(gif_bomb(10, 10, 50))
        assert (media["width"], media["height"]) == (10, 10)
        await alice.aclose()


async def test_a_decode_past_the_memory_limit_ends_its_process_not_the_node(tmp_path):
    """With the pixel budget out of the way, the decoding process's own memory limit stops
    the bomb: it fails there, and the node answers 413 and carries on."""
    config = media_config(tmp_path, max_image_pixels=10**12, max_image_frames=10**6, image_memory_mb=256)
    async with running_node(config) as node:
        refused = await upload_bomb(node, gif_bomb(3000, 3000, 60, white=True))
    assert refused.code == "too_large"
    assert "256 MiB" in refused.message


async def test_a_decode_past_the_time_limit_is_killed(tmp_path):
    config = media_config(tmp_path, max_image_pixels=10**12, max_image_frames=10**6, image_memory_mb=8192,
                          image_timeout=1.0)
    async with running_node(config) as node:
        refused = await upload_bomb(node, gif_bomb(3000, 3000, 60))
    assert refused.code == "too_large"
    assert "longer than 1 s" in refused.message


async def test_a_client_that_disconnects_mid_upload_leaves_nothing(node, trio_users):
    alice = await trio_users("alice")
    host, port = "127.0.0.1", node.http_port
    head = (f"POST /api/media?name=big.wav HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {alice.token}\r\n"
            f"Content-Length: 20000000\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    with trio.fail_after(20):
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(head + wav(0.01)[:44] + os.urandom(9_000_000))  # past the first 8 MiB part
        await wait_until(lambda: has_temp_files(node))  # the node is writing the upload to disk
        await stream.aclose()  # ... and the client goes away
        await wait_until(lambda: no_temp_files(node))
    await assert_nothing_left(node)
    assert await stored_files(node) == []
    assert (await alice.upload(png()))["mime"] == "image/png"  # the node carries on


# -- shares: the race with on_message_stored ------------------------------------------------------


async def test_download_right_after_delivery_does_not_wait_for_the_notification(node, trio_users):
    """The share of a message is recorded by `on_message_stored`, a notification that runs
    after delivery and may be dropped under load. Access must not depend on it: with the
    recorded share taken away (as if the notification had not run yet), the recipient can
    still download, through the pending share written by the gate and the chat log."""
    alice, bob = await trio_users("alice"), await trio_users("bob")
    chat = await alice.open_direct(username="bob")
    rec = media_records(node)
    with trio.fail_after(20):
        media = await alice.upload(png())
        mid = int(media["id"])
        assert await rec.pending_of(mid) == []
        async with alice.connect() as a:
            ack = await send_media(a, chat["id"], media["id"], "image")
        assert [row[1] for row in await rec.pending_of(mid)] == [int(chat["id"])]
        await wait_until(lambda: rec.shares_of(mid))  # the notification ran
        batch = rec.store.batch()
        for key, *_ in await rec.shares_of(mid):
            batch.delete(records.SHARES, key)
        await rec.store.write(batch)

        assert (await bob.fetch_media(media["id"])).status_code == 200
        assert [(c, s) for _, c, s, _ in await rec.shares_of(mid)] == [(int(chat["id"]), ack["seq"])]
        carol = await trio_users("carol")
        assert (await carol.fetch_media(media["id"])).status_code == 403


async def test_a_burst_of_media_messages_with_dropped_notifications(tmp_path):
    """With a one-slot event queue most `on_message_stored` notifications are dropped; every
    recipient download still works and the collector keeps every item."""
    config = make_config(tmp_path, plugins={"event_queue": 1, "media": {**store_section(tmp_path), "gc_grace": 0.0}})
    async with running_node(config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        with trio.fail_after(30):
            uploads = [await alice.upload(png(color=(i, i, i))) for i in range(12)]
            async with alice.connect() as a, bob.connect() as b:
                acks = await a.send_many([{"chat": chat["id"], "kind": "image", "media": m["id"], "text": None}
                                          for m in uploads])
                for ack in acks:
                    event = await b.wait_for("message", seq=ack["seq"])
                    assert (await bob.fetch_media(event["media"]["id"])).status_code == 200
            far = now_ms() + 10 * 3600 * 1000  # every pending share is old by then
            stats = await plugin(node).collect_garbage(now=far)
            assert stats["items"] == 0
            for m in uploads:
                assert (await bob.fetch_media(m["id"])).status_code == 200
                assert await shares_of(node, int(m["id"]))
        await alice.aclose()
        await bob.aclose()


# -- garbage collection -------------------------------------------------------------------------


async def test_garbage_collection(node, trio_users):
    alice, bob = await trio_users("alice"), await trio_users("bob")
    chat = await alice.open_direct(username="bob")
    gc = plugin(node).collect_garbage
    shared_bytes = png(color=(50, 60, 70))
    with trio.fail_after(30):
        unsent = await alice.upload(png(color=(1, 1, 1)))
        sent = await alice.upload(shared_bytes)
        async with alice.connect() as a:
            ack = await send_media(a, chat["id"], sent["id"], "image")
        await wait_until(lambda: shares_of(node, int(sent["id"])))
        same_bytes = await bob.upload(shared_bytes)  # the same content, stored once
        assert len(await stored_files(node)) == 2

        stats = await gc()
        assert stats["items"] == 2 and stats["files"] == 1  # unsent, and bob's copy (not its file)
        assert (await alice.fetch_media(unsent["id"])).status_code == 404
        assert (await bob.fetch_media(same_bytes["id"])).status_code == 404
        assert (await bob.fetch_media(sent["id"])).status_code == 200  # a message carries it
        assert len(await stored_files(node)) == 1

        async with alice.connect() as a:
            await a.delete(chat["id"], ack["id"])
        await wait_until(lambda: no_shares(node, int(sent["id"])))
        assert (await bob.fetch_media(sent["id"])).status_code == 403  # the message is gone
        # the send that stored it is long settled by then
        stats = await gc(now=now_ms() + 3600 * 1000)
        assert stats["items"] == 1 and stats["files"] == 1
        assert await stored_files(node) == [] and await item_count(node) == 0
        assert (await alice.fetch_media(sent["id"])).status_code == 404
        counts = await media_records(node).counts()
        del counts["dooms"]  # the notices of the deletions stay a while (service.py)
        assert all(v == 0 for v in counts.values()), counts


async def test_content_shared_by_two_uploads_lives_while_either_is_sent(node, trio_users):
    alice, bob = await trio_users("alice"), await trio_users("bob")
    chat = await alice.open_direct(username="bob")
    gc = plugin(node).collect_garbage
    data = wav(0.2)
    with trio.fail_after(30):
        first = await alice.upload(data)
        second = await bob.upload(data)
        async with alice.connect() as a, bob.connect() as b:
            ack_a = await send_media(a, chat["id"], first["id"], "audio")
            ack_b = await send_media(b, chat["id"], second["id"], "audio")
            await wait_until(lambda: shares_of(node, int(second["id"])))
            await a.delete(chat["id"], ack_a["id"])
            await wait_until(lambda: no_shares(node, int(first["id"])))
            later = now_ms() + 3600 * 1000
            assert await gc(now=later) == {"items": 1, "files": 0, "pending": 2}
            assert await alice.download(second["id"]) == data
            await b.delete(chat["id"], ack_b["id"])
            await wait_until(lambda: no_shares(node, int(second["id"])))
        assert (await gc(now=later))["files"] == 1
        assert await stored_files(node) == []


async def test_disappearing_messages_release_their_media(node, trio_users):
    alice, bob = await trio_users("alice"), await trio_users("bob")
    chat = await alice.open_direct(username="bob")
    with trio.fail_after(20):
        media = await alice.upload(png())
        async with alice.connect() as a:
            await send_media(a, chat["id"], media["id"], "image", ttl=60)
        await wait_until(lambda: shares_of(node, int(media["id"])))
        assert (await plugin(node).collect_garbage())["items"] == 0
        assert (await bob.fetch_media(media["id"])).status_code == 200
        stats = await plugin(node).collect_garbage(now=now_ms() + 3600 * 1000)  # after it expired
        assert stats == {"items": 1, "files": 1, "pending": 1}


async def test_grace_period_keeps_fresh_uploads(tmp_path):
    async with running_node(media_config(tmp_path, gc_grace=3600.0)) as node:
        alice = await new_user(node, "alice")
        with trio.fail_after(10):
            media = await alice.upload(png())
            assert (await plugin(node).collect_garbage())["items"] == 0
            assert (await alice.fetch_media(media["id"])).status_code == 200
            stats = await plugin(node).collect_garbage(now=now_ms() + 3601 * 1000)
            assert stats["items"] == 1 and await stored_files(node) == []
        await alice.aclose()


async def test_the_collector_runs_in_the_background(tmp_path):
    async with running_node(media_config(tmp_path, gc_grace=0.0, gc_interval=0.05)) as node:
        alice = await new_user(node, "alice")
        with trio.fail_after(10):
            await alice.upload(png())
            # the pass that removed it counts itself when it ends: wait for both
            async def collected() -> bool:
                return await item_count(node) == 0 and not await stored_files(node) and plugin(node).service.collections > 0

            await wait_until(collected)
        await alice.aclose()


@pytest.mark.store("local")
async def test_leftovers_of_a_crash_are_cleaned_at_start(tmp_path):
    config = media_config(tmp_path)
    root = config.data_dir / "media"
    (root / "tmp").mkdir(parents=True)
    (root / "tmp" / "half.part").write_bytes(b"half an upload")
    orphan = root / "content" / "ab" / ("ab" + "0" * 62)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"a file whose record never committed")
    os.utime(orphan, (0, 0))
    async with running_node(config) as node:
        with trio.fail_after(10):
            await wait_until(lambda: not orphan.exists())
        assert await temp_files(node) == []


@pytest.mark.store("local")
async def test_data_at_rest_is_for_the_node_alone(tmp_path):
    """The data dir is created 0700, media folders are 0700 and media files 0600, whatever
    the umask; a media store left 0755 by an older version is made 0700 at start."""
    config = media_config(tmp_path)
    (config.data_dir / "media" / "content").mkdir(parents=True, mode=0o755)
    os.chmod(config.data_dir, 0o755)  # an existing data dir is the operator's: left as it is
    (tmp_path / "fresh").mkdir()
    fresh = make_config(tmp_path / "fresh")
    old_umask = os.umask(0o022)
    try:
        async with running_node(fresh) as node:
            alice = await new_user(node, "alice")
            await alice.upload(png())
            await alice.upload(b"%PDF-1.4\n" + bytes(100))
            await alice.aclose()
        async with running_node(config):
            pass
    finally:
        os.umask(old_umask)
    mode = lambda path: path.stat().st_mode & 0o777  # noqa: E731
    assert mode(fresh.data_dir) == 0o700
    served = make_config(tmp_path / "served")  # `chatnode serve` makes the data dir before the node starts
    old_umask = os.umask(0o022)
    try:
        preflight.prepare_data_dir(served).close()
    finally:
        os.umask(old_umask)
    assert mode(served.data_dir) == 0o700
    media = fresh.data_dir / "media"
    folders = [media, *(p for p in media.rglob("*") if p.is_dir())]
    files = [p for p in media.rglob("*") if p.is_file()]
    assert len(files) >= 3  # two contents, a thumbnail
    assert {str(p.relative_to(media)): mode(p) for p in folders} == {str(p.relative_to(media)): 0o700 for p in folders}
    assert {str(p.relative_to(media)): mode(p) for p in files} == {str(p.relative_to(media)): 0o600 for p in files}
    assert mode(config.data_dir / "media") == 0o700  # what an older version left inside is now out of reach
    assert mode(config.data_dir) == 0o755


async def test_media_settings_are_validated(tmp_path):
    from node.config import ConfigError

    with pytest.raises(ConfigError, match="plugins.media"):
        await serve_node(media_config(tmp_path, max_image_bytes=0))
    with pytest.raises(ConfigError, match="plugins.media"):
        await serve_node(media_config(tmp_path, image_memory_mb=100))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in \[plugins.media\]: colour"):
        await serve_node(media_config(tmp_path, colour="red"))


def test_unit_ranges():
    from node.plugins.media.ranges import Unsatisfiable, parse_range

    assert parse_range(None, 10) is None
    assert parse_range("bytes=0-4", 10) == (0, 4)
    assert parse_range("bytes=5-", 10) == (5, 9)
    assert parse_range("bytes=-3", 10) == (7, 9)
    assert parse_range("bytes=-30", 10) == (0, 9)
    assert parse_range("bytes=8-100", 10) == (8, 9)
    assert parse_range("bytes=4-2", 10) is None
    assert parse_range("items=0-1", 10) is None
    assert parse_range("bytes=a-b", 10) is None
    for bad in ("bytes=10-", "bytes=-0"):
        with pytest.raises(Unsatisfiable):
            parse_range(bad, 10)


def test_unit_probe_reads_mp4_boxes():
    from node.plugins.media.probe import probe

    info = probe(DATA / "tiny.mp4", "video/mp4")
    assert info["width"] == 64 and info["height"] == 48 and 0.9 < info["duration"] < 1.3
    assert orjson.dumps(info)


def test_unit_webm_tracks_and_durations(tmp_path):
    from node.plugins.media.probe import probe
    from node.plugins.media.sniff import detect

    def element(ident: bytes, payload: bytes, size: bytes | None = None) -> bytes:
        return ident + (size if size is not None else bytes([0x80 | len(payload)])) + payload

    def webm_head(*track_types: int, tracks_first: bool = True) -> bytes:
        header = element(b"\x1a\x45\xdf\xa3", element(b"\x42\x82", b"webm"))
        entries = b"".join(element(b"\xae", element(b"\xd7", bytes([n + 1])) + element(b"\x83", bytes([kind])))
                           for n, kind in enumerate(track_types))
        tracks = element(b"\x16\x54\xae\x6b", entries)
        cluster = element(b"\x1f\x43\xb6\x75", element(b"\xe7", b"\x00"), b"\x01\xff\xff\xff\xff\xff\xff\xff")
        body = tracks + cluster if tracks_first else cluster + tracks
        return header + element(b"\x18\x53\x80\x67", body, b"\x01\xff\xff\xff\xff\xff\xff\xff")

    assert detect(webm_head(2)) == "audio/webm"
    assert detect(webm_head(2, 2)) == "audio/webm"
    assert detect(webm_head(1, 2)) == "video/webm"  # a video with sound
    assert detect(webm_head(1)) == "video/webm"
    assert detect(webm_head(2, tracks_first=False)) == "video/webm"  # tracks not seen: as filetype says
    assert detect(webm_head(2)[:30]) == "video/webm"  # cut inside the Tracks element
    assert detect((DATA / "voice-chromium.webm").read_bytes()[:SNIFF]) == "audio/webm"
    assert detect((DATA / "voice.ogg").read_bytes()[:SNIFF]) == "audio/ogg"

    # MediaRecorder's WebM has no Duration: the last block's time (plus one frame) is the length
    assert probe(DATA / "voice-chromium.webm", "audio/webm") == {"duration": pytest.approx(1.5, abs=0.07)}
    assert probe(DATA / "tiny.webm", "video/webm") == {"duration": pytest.approx(1.0, abs=0.01)}  # Info's Duration
    assert probe(DATA / "voice-chromium.webm", "video/webm") == {}  # large videos are not walked
    cut = tmp_path / "cut.webm"
    cut.write_bytes((DATA / "voice-chromium.webm").read_bytes()[:1000])  # an upload cut short: what is there counts
    assert 0 < probe(cut, "audio/webm")["duration"] < 1.5
    garbage = tmp_path / "garbage.webm"
    garbage.write_bytes(b"\x1a\x45\xdf\xa3" + random.Random(0).randbytes(3000))  # fixed: chance can form a block
    assert probe(garbage, "audio/webm") == {}


def test_unit_animations_keep_their_frames_and_lose_their_comments(tmp_path):
    from node.plugins.media.images import ImageRejected, process_image

    frames = [Image.new("RGB", (30, 20), color) for color in ("red", "green", "blue")]
    for fmt, mime in (("GIF", "image/gif"), ("WEBP", "image/webp"), ("PNG", "image/png")):
        path = tmp_path / f"a.{fmt.lower()}"
        extra = {"comment": b"secret comment"} if fmt == "GIF" else {}
        frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=[50, 60, 70], loop=0, **extra)
        clean, thumb, meta = process_image(path, mime, max_pixels=10**6, max_frames=10, thumbnail_size=16, quality=90)
        image = Image.open(io.BytesIO(clean))
        assert image.format == fmt and getattr(image, "n_frames", 1) == 3, fmt
        assert b"secret" not in clean and meta == {"width": 30, "height": 20}
        assert max(Image.open(io.BytesIO(thumb)).size) <= 16
        with pytest.raises(ImageRejected, match="30x20x3") as refused:
            process_image(path, mime, max_pixels=30 * 20 * 3 - 1, max_frames=10, thumbnail_size=16, quality=90)
        assert refused.value.too_large
