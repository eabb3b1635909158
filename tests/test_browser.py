"""The web client in a real browser: Playwright drives Debian's Chromium (headless)
against a node started as a subprocess, with several users in separate browser contexts.

Playwright's sync API runs its own event loop, so these are plain (sync) tests, which
pytest-trio leaves alone; the node runs in its own process. Screenshots of the main
screens go to test-artifacts/.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trio
from conftest import storage_toml
from ports import free_port

from node.client import ChatClient
from node.testing import wait_until_sync

pytestmark = pytest.mark.browser

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
expect = playwright_api.expect
expect.set_options(timeout=10_000)  # generous for a busy CI machine; passing runs do not wait

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
DATA = Path(__file__).resolve().parent / "data"
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
    # a microphone that plays a beep, allowed without asking: voice messages are recorded for real
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
]
PASSWORD = "correct horse battery"
DESKTOP = {"width": 1100, "height": 720}
PHONE = {"width": 390, "height": 780}


# -- the node, as a process ----------------------------------------------------------------



def start_node_process(config: Path, url: str) -> subprocess.Popen:
    """`python -m node serve` on a config, in its folder (errors to node.log there), once
    it answers at `url`."""
    log = config.parent / "node.log"
    with open(log, "ab") as out:  # the child keeps its own copy of the file
        proc = subprocess.Popen(
            [sys.executable, "-m", "node", "serve", "--config", str(config), "--log-level", "WARNING"],
            cwd=config.parent, stdout=subprocess.DEVNULL, stderr=out,
        )

    def serving() -> bool:
        assert proc.poll() is None, f"the node exited: {log.read_text(errors='replace')[-3000:]}"
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(serving, "the node to start", 30)
    return proc


class NodeProcess:
    """`python -m node serve` on free loopback ports, restartable on the same data.
    `limits` and `media` are extra lines for those sections of its config."""

    def __init__(self, folder: Path, limits: str = "", media: str = "") -> None:
        self.folder = folder
        self.http_port, self.ws_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.config = folder / "config.toml"
        self.config.write_text(f"""
[node]
data_dir = "data"
[http]
host = "127.0.0.1"
port = {self.http_port}
graceful_timeout = 1.0
[websocket]
host = "127.0.0.1"
port = {self.ws_port}
[accounts]
argon2_time_cost = 1
argon2_memory_kib = 64
login_failures_per_address = 1000
[limits]
frames_per_second = 10000.0
frame_burst = 10000
user_messages_per_second = 10000.0
user_message_burst = 100000
{limits}
[plugins.lastseen]
grace = 0.2
[plugins.media]
{media}
{storage_toml(folder / "data")}
""")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = start_node_process(self.config, self.url)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def register(self, username: str, display_name: str | None = None) -> None:
        body = {"username": username, "password": PASSWORD, "display_name": display_name or username.title()}
        response = httpx.post(f"{self.url}/api/register", json=body)
        assert response.status_code == 201, response.text


@pytest.fixture(scope="module")
def node(tmp_path_factory, module_engine) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("browser-node"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


# -- the browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (make test installs Debian's chromium)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Pages:
    """Opens browser contexts (one per user) and checks that none broke a CSP rule or threw."""

    def __init__(self, browser, node: NodeProcess) -> None:
        self.browser = browser
        self.node = node
        self.contexts = []
        self.problems: list[str] = []

    def new(self, viewport=DESKTOP, **options):
        context = self.browser.new_context(viewport=viewport, base_url=self.node.url, **options)
        context.set_default_timeout(10_000)
        self.contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("console", self._console)
        page.goto("/")
        return page

    def _console(self, message) -> None:
        # Failed requests (a wrong password, the node or the network away) are expected;
        # a policy violation or an uncaught error is not.
        if "Content Security Policy" in message.text or "Uncaught" in message.text:
            self.problems.append(f"console {message.type}: {message.text}")

    def login(self, username: str, viewport=DESKTOP, notifications_banner: bool = False, **options):
        page = self.new(viewport, **options)
        page.fill("#auth-username", username)
        page.fill("#auth-password", PASSWORD)
        page.click("#auth-submit")
        expect(page.locator("#main-view")).to_be_visible()
        expect(page.locator("#me-name")).not_to_be_empty()
        # Online before the test goes on: the list is drawn before the socket connects, and
        # the "Connecting…" banner over it moves every row while it shows (a point measured
        # then lands elsewhere once it goes).
        expect(page.locator("#conn-banner[data-state='online']")).to_be_attached()
        if not notifications_banner:
            page.click("#notify-later")
        return page

    def close(self) -> None:
        for context in self.contexts:
            try:
                context.close()
            except playwright_api.Error:
                pass  # closed by the test


@pytest.fixture
def pages(browser, node) -> Iterator[Pages]:
    made = Pages(browser, node)
    try:
        yield made
    finally:
        made.close()
    assert not made.problems, made.problems


_names = iter(range(1, 10_000))


@pytest.fixture
def names(node):
    """Fresh registered usernames: `alice, bob = names("alice", "bob")` -> alice7, bob8."""

    def make(*bases: str) -> list[str]:
        out = []
        for base in bases:
            name = f"{base}{next(_names)}"
            node.register(name, base.title())
            out.append(name)
        return out

    return make


def steady_point(locator, dx: float) -> dict:
    """A point `dx` px into the element, halfway down, once the element has stayed put for
    a few frames and nothing covers that point: a touch sent through CDP lands wherever the
    point is by then, and a list still settling (history loading, a banner going) moves it."""
    found: dict = {}

    def settled() -> bool:
        point = locator.evaluate(_STEADY_POINT, dx)
        if point:
            found.update(point)
        return bool(point)

    wait_until(settled, "the element to stay put")
    return found


_STEADY_POINT = """async (e, dx) => {
  const box = () => { const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height].join(); };
  const before = box();
  for (let i = 0; i < 5; i++) await new Promise((done) => requestAnimationFrame(done));
  if (!e.isConnected || box() !== before) return null;
  const r = e.getBoundingClientRect();
  const point = { x: r.x + dx, y: r.y + r.height / 2 };
  const hit = document.elementFromPoint(point.x, point.y);
  return hit && e.contains(hit) ? point : null;
}"""


def shot(page, name: str, **options) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), **options)


def open_direct(page, username: str) -> None:
    """Open the 1-1 chat with `username` from the people search, and wait until it is the
    open chat (its title is that person's name: the chat open before has a title too)."""
    page.fill("#search", username)
    person = page.locator(f"#people-list button:has(.preview:text-is('@{username}'))")  # (bob7, not bob71)
    name = person.locator(".chat-name").inner_text()
    person.click()
    expect(page.locator("#chat-view")).to_be_visible()
    expect(page.locator("#chat-title")).to_have_text(name)


def open_chat(page, title: str) -> None:
    page.click(f"#chat-list .chat-item:has(.chat-name:text-is('{title}'))")
    expect(page.locator("#chat-title")).to_have_text(title)


def send(page, text: str) -> None:
    page.fill("#compose-text", text)
    page.press("#compose-text", "Enter")


def texts(page) -> list[str]:
    return page.locator("#message-list .msg .text:not(.deleted)").all_inner_texts()


def seqs(page) -> list[int]:
    return [int(s) for s in page.locator("#message-list .msg[data-seq]").evaluate_all("rows => rows.map(r => r.dataset.seq)")]


def message_action(page, text: str, action: str) -> None:
    """Point at a stored message and pick an action: React and Reply show on hover, the
    others are in its menu ("More actions")."""
    row = page.locator(f"#message-list .msg[data-seq]:has(.text:text-is('{text}'))")
    row.locator(".bubble").hover()
    if action in ("React", "Reply"):
        row.locator(f".actions [aria-label='{action}']").click()
        return
    row.locator(".actions [aria-label='More actions']").click()
    page.locator("#popup-menu").get_by_role("menuitem", name=action, exact=True).click()


def own_status(page, text: str):
    return page.locator(f"#message-list .msg.own:has(.text:text-is('{text}')) .tick")


# -- scenarios -----------------------------------------------------------------------------


def test_register_log_in_reload_and_log_out(pages):
    page = pages.new()
    expect(page.locator("#login-view")).to_be_visible()
    shot(page, "01-login")
    page.click("#auth-switch")
    expect(page.locator("#auth-title")).to_have_text("Create an account")
    page.fill("#auth-username", "Dora")
    page.fill("#auth-display", "Dora Explorer")
    page.fill("#auth-password", "short")
    page.click("#auth-submit")
    expect(page.locator("#auth-error")).to_contain_text("at least")
    page.fill("#auth-password", PASSWORD)
    page.press("#auth-password", "Enter")
    expect(page.locator("#me-name")).to_have_text("Dora Explorer")
    expect(page.locator("#chat-list-empty")).to_be_visible()

    page.reload()  # the session is kept in localStorage
    expect(page.locator("#me-name")).to_have_text("Dora Explorer")
    expect(page.locator("#login-view")).to_be_hidden()

    page.click("#logout")
    page.click("#confirm-ok")
    expect(page.locator("#login-view")).to_be_visible()
    page.reload()
    expect(page.locator("#login-view")).to_be_visible()  # logged out for good
    page.fill("#auth-username", "dora")
    page.fill("#auth-password", "wrong password")
    page.click("#auth-submit")
    expect(page.locator("#auth-error")).to_have_text("Wrong username or password.")


def test_two_users_chat_both_ways_with_ticks_typing_and_presence(pages, names):
    alice, bob = names("alice", "bob")
    a = pages.login(alice)
    open_direct(a, bob)
    send(a, "Hi Bob! Are you there?")
    expect(own_status(a, "Hi Bob! Are you there?")).to_have_attribute("data-status", "sent")  # bob has no device on

    b = pages.login(bob)  # bob's device takes the message: delivered
    expect(own_status(a, "Hi Bob! Are you there?")).to_have_attribute("data-status", "delivered")
    item = b.locator("#chat-list .chat-item").first
    expect(item.locator(".chat-name")).to_have_text("Alice")
    expect(item.locator(".preview")).to_have_text("Hi Bob! Are you there?")
    expect(item.locator(".unread")).to_have_text("1")
    shot(b, "02-chat-list")

    open_chat(b, "Alice")  # bob reads it
    expect(own_status(a, "Hi Bob! Are you there?")).to_have_attribute("data-status", "read")
    expect(item.locator(".unread")).to_have_count(0)
    expect(a.locator("#chat-subtitle")).to_have_text("")  # bob has not written to alice: she is no contact of his

    b.locator("#compose-text").press_sequentially("Yes", delay=20)  # typing...
    expect(a.locator("#chat-subtitle")).to_have_text("typing…")
    b.press("#compose-text", "Enter")
    expect(a.locator("#message-list .msg.theirs .text")).to_have_text(["Yes"])
    expect(a.locator("#chat-subtitle")).to_have_text("online")

    # a reply, an edit, and a delete, seen on both sides
    message_action(a, "Yes", "Reply")
    expect(a.locator("#compose-context-title")).to_have_text("Reply to Bob")
    send(a, "Great, lunch at noon?")
    expect(b.locator("#message-list .msg.theirs .quote")).to_contain_text("Yes")
    send(a, "tpyo")
    expect(own_status(a, "tpyo")).not_to_have_attribute("data-status", "pending")
    a.press("#compose-text", "ArrowUp")  # edits the last message
    expect(a.locator("#compose-context-title")).to_have_text("Edit message")
    a.fill("#compose-text", "typo fixed")
    a.press("#compose-text", "Enter")
    expect(b.locator("#message-list .msg.theirs .text").last).to_have_text("typo fixed")
    expect(b.locator("#message-list .msg.theirs .edited")).to_have_count(1)
    send(b, "oops, wrong chat")
    message_action(b, "oops, wrong chat", "Delete for everyone")
    b.click("#confirm-ok")
    expect(a.locator("#message-list .text.deleted")).to_have_text(["This message was deleted"])
    expect(b.locator("#message-list .text.deleted")).to_have_text(["You deleted this message"])
    send(b, "See you at noon")
    expect(own_status(b, "See you at noon")).to_have_attribute("data-status", "read")
    expect(a.locator("#message-list .day-label")).to_have_text(["Today"])
    shot(a, "03-conversation")

    b.context.close()  # bob leaves: alice sees when he was last online
    expect(a.locator("#chat-subtitle")).to_contain_text("last seen today at", timeout=10_000)
    assert texts(a) == ["Hi Bob! Are you there?", "Yes", "Great, lunch at noon?", "typo fixed", "See you at noon"]


def test_group_of_three_each_sends_and_members_are_managed(pages, names):
    alice, bob, carol, dave = names("alice", "bob", "carol", "dave")
    a, b, c = pages.login(alice), pages.login(bob), pages.login(carol)
    a.click("#new-group")
    a.fill("#group-title", "Hiking trip")
    for user in (bob, carol):
        a.fill("#group-search", user)
        a.click(f"#group-results button:has-text('@{user}')")
    expect(a.locator("#group-chosen .chip")).to_have_count(2)
    a.click("#group-create")
    expect(a.locator("#chat-title")).to_have_text("Hiking trip")
    send(a, "Saturday at 8?")
    open_chat(b, "Hiking trip")
    send(b, "I'm in")
    open_chat(c, "Hiking trip")
    expect(c.locator("#message-list .text")).to_have_count(2)
    send(c, "Me too, I'll bring snacks")
    expected = ["Saturday at 8?", "I'm in", "Me too, I'll bring snacks"]
    for page in (a, b, c):
        expect(page.locator("#message-list .msg .text")).to_have_text(expected)
    assert seqs(a) == seqs(b) == seqs(c)  # the same order everywhere
    expect(b.locator("#message-list .msg.theirs .sender")).to_have_text(["Alice", "Carol"])
    expect(own_status(a, "Saturday at 8?")).to_have_attribute("data-status", "read")  # everyone read it

    # who has read, for the sender
    message_action(a, "Saturday at 8?", "Message info")
    expect(a.locator("#receipts-body .read .member-name")).to_have_count(2)
    a.keyboard.press("Escape")
    expect(a.locator("#receipts-dialog")).to_be_hidden()

    # members and roles; add dave, remove carol
    a.click("#chat-info")
    members = a.locator("#info-body .member")
    expect(members).to_have_count(3)
    expect(a.locator("#info-body .member:has-text('You') .role-badge")).to_have_text("Admin")
    a.fill("#info-add", dave)
    a.click(f"#info-body .pick:has-text('@{dave}')")
    expect(members).to_have_count(4)
    a.click(f"#info-body .member:has-text('@{carol}') button:has-text('Remove')")
    a.click("#confirm-ok")
    expect(members).to_have_count(3)
    a.click(f"#info-body .member:has-text('@{bob}') button:has-text('Make admin')")
    expect(a.locator(f"#info-body .member:has-text('@{bob}') .role-badge")).to_have_text("Admin")
    shot(a, "05-group-info")
    a.keyboard.press("Escape")
    expect(a.locator("#info-dialog")).to_be_hidden()
    expect(a.locator("#message-list .system-note")).to_have_text([
        "You created the group “Hiking trip”", "You added Dave", "You removed Carol", "You made Bob an admin"])
    expect(c.locator("#compose-disabled")).to_be_visible()  # carol keeps what she had, sends nothing more
    expect(b.locator("#chat-subtitle")).to_contain_text("Dave")
    shot(b, "04-group")


def test_photo_audio_and_video_are_sent_shown_and_playable(pages, names, node, tmp_path):
    if httpx.post(f"{node.url}/api/media").status_code == 404:
        pytest.skip("this node has no media plugin")
    alice, bob, carol = names("alice", "bob", "carol")
    group = {"title": "Book club", "usernames": [bob, carol]}
    assert httpx.post(f"{node.url}/api/groups", json=group, headers=auth(node, alice)).status_code == 201
    a, b = pages.login(alice), pages.login(bob)
    open_direct(a, bob)
    send(a, "Photos from the weekend")
    open_chat(b, "Alice")

    # a photo, from the file picker, with a caption
    photo = tmp_path / "lake.jpg"
    photo.write_bytes(lake_photo())
    a.set_input_files("#file-input", str(photo))
    expect(a.locator("#attach-dialog")).to_be_visible()
    expect(a.locator("#attach-preview img")).to_be_visible()
    a.fill("#attach-caption", "The lake at sunrise")
    a.click("#attach-send")
    image = b.locator("#message-list .media-image img")
    expect(image).to_have_count(1)
    wait_until(lambda: image.evaluate("img => img.complete && img.naturalWidth") > 0, "the photo to load")
    assert "/thumbnail?" in image.get_attribute("src")  # the thumbnail, by a signed URL
    expect(b.locator("#message-list .msg.theirs .text").last).to_have_text("The lake at sunrise")
    b.click("#message-list .media-open")  # the whole photo
    viewer = b.locator("#viewer-image")
    wait_until(lambda: viewer.evaluate("img => img.complete && img.naturalWidth") >= 640, "the full photo")
    b.keyboard.press("Escape")
    message_action(b, "The lake at sunrise", "Reply")
    send(b, "Beautiful! Where is this?")
    expect(a.locator("#message-list .msg.theirs .quote")).to_contain_text("Photo: The lake at sunrise")
    send(a, "Lake Bled, just before 6 am")
    expect(own_status(a, "Lake Bled, just before 6 am")).to_have_attribute("data-status", "read")
    expect(a.locator("#chat-list .chat-name")).to_have_text(["Bob", "Book club"])  # newest first
    dress_up_for_the_overview(node, alice, bob, carol)
    expect(a.locator("#chat-list .chat-name")).to_have_text(["Book club", "Bob"])  # pinned first
    expect(a.locator("#message-list .reactions .reaction")).to_have_text(["❤️", "👍"])
    for avatar in (a.locator("#me-avatar"), a.locator("#chat-avatar"), a.locator("#chat-list .avatar").first):
        expect(avatar.locator("img.avatar-img")).to_be_visible()
    a.mouse.move(0, 0)
    shot(a, "09-overview")  # also the README's screenshot: `make screenshot` copies it to docs/

    # a voice note, dropped onto the conversation, on a slow uplink to see the progress
    cdp = a.context.new_cdp_session(a)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions",
             {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 120_000})
    drop_file(a, "#conversation", "voice-note.wav", "audio/wav", tone(seconds=10.0))
    expect(a.locator("#attach-dialog")).to_be_visible()
    a.click("#attach-send")
    progress = a.locator("#uploads progress")
    expect(progress).to_be_visible()
    wait_until(lambda: 0 < int(progress.get_attribute("value") or 0) or not progress.count(), "upload progress")
    expect(a.locator("#uploads .upload")).to_have_count(0, timeout=20_000)
    cdp.send("Network.emulateNetworkConditions",
             {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    audio = b.locator("#message-list .media-audio audio")
    expect(audio).to_have_count(1)
    wait_until(lambda: audio.evaluate("a => a.readyState >= 1 && a.duration") > 3.5, "the audio's metadata")
    assert audio.evaluate(SEEK, 2.5) == pytest.approx(2.5, abs=0.2)  # seeking: Range requests

    # a video
    if not (DATA / "tiny.webm").exists():
        pytest.skip("tests/data/tiny.webm is missing (see tests/data/README.md)")
    a.set_input_files("#file-input", str(DATA / "tiny.webm"))
    a.fill("#attach-caption", "Clip")
    a.click("#attach-send")
    video = b.locator("#message-list .media-video video")
    expect(video).to_have_count(1)
    wait_until(lambda: video.evaluate("v => v.readyState >= 1 && v.duration") > 0.5, "the video's metadata")
    assert video.evaluate(SEEK, 0.5) == pytest.approx(0.5, abs=0.2)
    expect(b.locator("#chat-list .chat-item").first.locator(".preview")).to_have_text("Video: Clip")
    b.locator("#messages").evaluate("el => { el.scrollTop = el.scrollHeight - el.clientHeight - 150; }")
    shot(b, "06-media")


def face(background: tuple[int, int, int], skin: tuple[int, int, int], hair: tuple[int, int, int]) -> bytes:
    """A simple portrait for a profile photo (drawn with Pillow)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (256, 256), background)
    draw = ImageDraw.Draw(image)
    draw.ellipse((48, 170, 208, 330), fill=hair)  # shoulders
    draw.ellipse((78, 50, 178, 160), fill=skin)  # head
    draw.chord((74, 38, 182, 130), 180, 360, fill=hair)  # hair
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def dress_up_for_the_overview(node: NodeProcess, alice: str, bob: str, carol: str) -> None:
    """What the README's picture shows besides the chat itself: profile and group photos,
    reactions, a pinned group with an unread mention. Done over the API and the chat socket."""

    async def go() -> None:
        clients = {}
        for name in (alice, bob, carol):
            clients[name] = ChatClient(node.url)
            await clients[name].login(name, PASSWORD)
        a, b, c = clients[alice], clients[bob], clients[carol]
        for client, colours in ((a, ((236, 200, 160), (250, 214, 180), (120, 70, 40))),
                                (b, ((170, 205, 230), (225, 180, 140), (40, 40, 50)))):
            media = await client.upload(face(*colours), name="me.jpg")
            await client.set_photo(media["id"])
        group = next(chat for chat in await a.chats() if chat["kind"] == "group")
        cover = await a.upload(lake_photo(), name="club.jpg")
        await a.set_group_photo(group["id"], cover["id"])
        direct = next(chat for chat in await a.chats() if chat["kind"] == "direct")
        history = await b.history(direct["id"])
        photo = next(m for m in history if m["kind"] == "image")
        question = next(m for m in history if m.get("text") == "Beautiful! Where is this?")
        await b.react(direct["id"], photo["seq"], "❤️")
        await a.react(direct["id"], question["seq"], "👍")
        async with c.connect() as conn:
            await conn.send_text(group["id"], "@Alice did you finish the book?", mentions=[a.user["id"]])
        await a.set_prefs(group["id"], pinned=True)
        for client in clients.values():
            await client.aclose()

    trio.run(go)


def test_history_pages_load_as_you_scroll_up(pages, names, node):
    alice, bob = names("alice", "bob")

    async def bob_writes() -> None:
        async with ChatClient(node.url) as client:
            await client.login(bob, PASSWORD)
            chat = await client.open_direct(username=alice)
            async with client.connect() as conn:
                for start in range(0, 120, 40):
                    await conn.send_many([{"chat": chat["id"], "text": f"message {i}"} for i in range(start, start + 40)])

    writer = threading.Thread(target=trio.run, args=(bob_writes,))  # trio in its own thread
    writer.start()
    writer.join(30)
    a = pages.login(alice)
    expect(a.locator("#chat-list .unread")).to_have_text("99+")
    open_chat(a, "Bob")
    rows = a.locator("#message-list .msg")
    expect(rows).to_have_count(50)
    expect(rows.last).to_contain_text("message 119")
    assert a.locator("#messages").evaluate("el => el.scrollHeight - el.scrollTop - el.clientHeight") < 5  # at the end
    for count in (100, 120):
        a.locator("#messages").evaluate("el => { el.scrollTop = 0; }")
        expect(rows).to_have_count(count)
        assert a.locator("#messages").evaluate("el => el.scrollTop") > 200  # still looking at the same messages
    expect(a.locator("#history-status")).to_have_text("This is the start of the chat.")
    assert texts(a) == [f"message {i}" for i in range(120)]
    assert seqs(a) == list(range(seqs(a)[0], seqs(a)[0] + 120))


def test_offline_and_back_keeps_every_message_exactly_once(pages, names, node):
    alice, bob = names("alice", "bob")
    a, b = pages.login(alice), pages.login(bob)
    open_direct(a, bob)
    send(a, "one")
    open_chat(b, "Alice")
    expect(b.locator("#message-list .text")).to_have_text(["one"])

    b.context.set_offline(True)  # bob's network goes away
    expect(b.locator("#conn-banner")).to_contain_text("offline")
    send(b, "typed while offline")
    expect(own_status(b, "typed while offline")).to_have_attribute("data-status", "pending")
    for text in ("two", "three"):
        send(a, text)
    expect(own_status(a, "three")).to_have_attribute("data-status", "sent")
    shot(b, "07-offline")
    b.context.set_offline(False)
    expected = ["one", "two", "three", "typed while offline"]
    expect(b.locator("#message-list .msg .text")).to_have_text(expected, timeout=15_000)
    expect(a.locator("#message-list .msg .text")).to_have_text(expected)
    expect(b.locator("#conn-banner")).to_be_hidden()
    expect(own_status(b, "typed while offline")).to_have_attribute("data-status", "read")

    # the node itself goes away and comes back: queued messages go out once, nothing is lost
    node.stop()
    expect(a.locator("#conn-banner")).to_contain_text("Not connected", timeout=10_000)
    send(a, "four, while the node is down")
    expect(own_status(a, "four, while the node is down")).to_have_attribute("data-status", "pending")
    context, url = a.context, a.url
    a.close()  # the tab closes before it could send: the message waits in its outbox
    node.start()
    a = context.new_page()
    a.goto(url)
    expected.append("four, while the node is down")
    for page in (a, b):
        expect(page.locator("#message-list .msg .text")).to_have_text(expected, timeout=20_000)
        expect(page.locator("#conn-banner")).to_be_hidden()
    send(b, "five")
    expected.append("five")
    for page in (a, b):
        expect(page.locator("#message-list .msg .text")).to_have_text(expected)
        assert seqs(page) == sorted(set(seqs(page)))  # each entry once, in order
    assert seqs(a) == seqs(b)
    stored = httpx.get(f"{node.url}/api/chats", headers=auth(node, alice)).json()["chats"][0]
    history = httpx.get(f"{node.url}/api/chats/{stored['id']}/messages", headers=auth(node, alice)).json()["messages"]
    assert [m["text"] for m in history] == expected


def test_disappearing_messages(pages, names, node):
    alice, bob = names("alice", "bob")
    a, b = pages.login(alice), pages.login(bob)
    open_direct(a, bob)
    send(a, "this one stays")
    open_chat(b, "Alice")
    a.click("#chat-info")
    a.select_option("#info-ttl", "30")
    expect(a.locator("#chat-ttl")).to_have_text("30 seconds")
    a.keyboard.press("Escape")
    expect(b.locator("#message-list .system-note").last).to_have_text("Alice turned on disappearing messages: 30 seconds")
    chat_id = a.evaluate("() => location.hash.split('=')[1]")
    response = httpx.patch(f"{node.url}/api/chats/{chat_id}", json={"ttl": 1}, headers=auth(node, alice))
    assert response.status_code == 200, response.text
    expect(b.locator("#chat-ttl")).to_have_text("1 second")
    send(b, "gone in a second")
    expect(a.locator("#message-list .msg .text")).to_have_text(["this one stays", "gone in a second"])
    expect(a.locator("#message-list .msg.theirs .expiring")).to_have_count(1)
    for page in (a, b):
        expect(page.locator("#message-list .msg .text")).to_have_text(["this one stays"], timeout=5_000)


def test_notification_when_the_tab_is_hidden(pages, names):
    alice, bob = names("alice", "bob")
    a = pages.login(alice, notifications_banner=True)
    b = pages.login(bob)
    open_direct(b, alice)
    expect(a.locator("#notify-banner")).to_be_visible()  # offered, not asked for on load
    assert a.evaluate("() => Notification.permission") == "default"
    a.add_init_script(HIDDEN_TAB_WITH_NOTIFICATION_SPY)  # a hidden tab, and a browser that says yes
    a.reload()
    expect(a.locator("#notify-banner")).to_be_visible()
    assert a.evaluate("() => window.asked") == 0
    a.click("#notify-on")
    assert a.evaluate("() => window.asked") == 1
    expect(a.locator("#notify-banner")).to_be_hidden()
    send(b, "Psst, are you there?")
    wait_until(lambda: a.evaluate("() => window.shown.length") > 0, "a notification")
    assert a.evaluate("() => window.shown[0]") == {"title": "Bob", "body": "Psst, are you there?", "tag": a.evaluate(
        "() => document.querySelector('#chat-list .chat-item').dataset.chat")}


def test_background_notifications_fall_back_quietly_and_the_service_worker_shows_pushes(pages, names, node):
    alice, bob = names("alice", "bob")
    a = pages.login(alice, notifications_banner=True)
    b = pages.login(bob)
    open_direct(b, alice)
    send(b, "Hello Alice")
    expect(a.locator("#chat-list .chat-item")).to_have_count(1)
    chat_id = a.locator("#chat-list .chat-item").get_attribute("data-chat")
    assert a.evaluate(REGISTRATION) is None  # nothing is registered before notifications are on

    a.context.grant_permissions(["notifications"])  # what the browser answers when asked
    a.click("#notify-on")
    wait_until(lambda: (a.evaluate(REGISTRATION) or {}).get("state") == "activated", "an active service worker")
    assert a.evaluate(REGISTRATION) == {"scope": f"{node.url}/", "script": f"{node.url}/sw.js", "state": "activated"}

    # Playwright's contexts are off the record, where Chromium has no Push API (and this
    # machine no push service): subscribing fails, and only Settings says so.
    a.click("#open-settings")
    expect(a.locator("#settings-notify")).to_be_checked()
    wait_until(lambda: a.evaluate("() => localStorage.getItem('chatnode.push.state')"), "the subscription's outcome")
    if a.evaluate("() => localStorage.getItem('chatnode.push.state')") == "on":  # a browser with a push service
        targets = httpx.get(f"{node.url}/api/push/targets", headers=auth(node, alice)).json()["targets"]
        assert [t["kind"] for t in targets] == ["webpush"]
    else:
        expect(a.locator("#settings-push-unavailable")).to_be_visible()
        expect(a.locator("#settings-push-unavailable")).to_contain_text(
            "Background notifications are unavailable in this browser or network")
        expect(a.locator("#settings-notify-hint")).to_have_text(
            "On this browser, for messages that arrive while the tab is in the background.")
    assert a.locator("dialog[open]").count() == 0
    expect(a.locator("#toast")).to_be_hidden()
    a.click("#settings-back")

    # The worker's push handler, fed by DevTools as the push service would.
    push = PushDevTools(a, node.url)
    a.evaluate("() => { window.fromWorker = []; navigator.serviceWorker.addEventListener('message', (e) => window.fromWorker.push(e.data)); }")
    push.deliver({"type": "message", "node": "chatnode", "chat": chat_id, "from": "1", "count": 1})
    wait_until(lambda: a.evaluate("() => window.fromWorker.length") > 0, "the worker telling the visible tab")
    assert a.evaluate("() => window.fromWorker") == [{"type": "push", "chat": chat_id}]
    assert a.evaluate(NOTIFICATIONS) == []  # the tab is visible: no notification repeats what it shows

    a.goto("about:blank")  # no tab of the client left
    [worker] = [w for w in a.context.service_workers if w.url == f"{node.url}/sw.js"]
    # ... once the worker no longer counts the page that left (a push meanwhile goes to it)
    wait_until(lambda: worker.evaluate(
        "async () => (await self.clients.matchAll({ type: 'window', includeUncontrolled: true })).length") == 0,
        "the page gone from the worker's clients")

    def counts() -> dict[str, int]:
        return {n["tag"]: n["data"]["count"] for n in worker.evaluate(NOTIFICATIONS_IN_WORKER)}

    def deliver(payload: dict, shown: Callable[[dict[str, int]], bool]) -> None:
        """One push, and its notification. DevTools can drop a push delivered while the
        worker stops (its last page just left): one that changed nothing goes again."""
        push.deliver(payload)
        try:
            wait_until(lambda: shown(counts()), "a push's notification", timeout=4)
        except AssertionError:
            push.deliver(payload)
            wait_until(lambda: shown(counts()), "a push's notification")

    deliver({"type": "message", "node": "chatnode", "chat": chat_id, "from": "1", "count": 1},
            lambda c: c.get(chat_id) == 1)
    deliver({"type": "message", "node": "chatnode", "chat": chat_id, "from": "1", "count": 2},
            lambda c: c.get(chat_id) == 3)  # one notification per chat, counting
    deliver({"type": "message", "node": "chatnode", "chat": "77", "count": 1, "kind": "image",
             "sender_name": "Bob", "text": "the lake at dawn"}, lambda c: "77" in c)  # with the node's previews on
    expected = [
        {"title": "chatnode", "body": "3 new messages", "tag": chat_id, "data": {"chat": chat_id, "count": 3}},
        {"title": "Bob", "body": "Photo: the lake at dawn", "tag": "77", "data": {"chat": "77", "count": 1}},
    ]
    wait_until(lambda: sorted(worker.evaluate(NOTIFICATIONS_IN_WORKER), key=lambda n: n["tag"]) == expected,
               "the notifications")
    a.goto("/")
    expect(a.locator("#chat-list .chat-item")).to_have_count(1)
    assert sorted(a.evaluate(NOTIFICATIONS), key=lambda n: n["tag"]) == expected  # what the page sees too

    # A click on a notification (dispatched in the worker: DevTools cannot click one) opens
    # its chat in the open tab.
    worker.evaluate("""async (tag) => {
        const [notification] = await self.registration.getNotifications({ tag });
        self.dispatchEvent(new NotificationEvent('notificationclick', { notification }));
    }""", chat_id)
    expect(a.locator("#chat-title")).to_have_text("Bob")
    assert a.evaluate("() => location.hash") == f"#chat={chat_id}"
    wait_until(lambda: [n["tag"] for n in a.evaluate(NOTIFICATIONS)] == ["77"], "the chat's notification closed")

    # Without background notifications, the tab's own notifications work as before.
    a.add_init_script(HIDDEN_TAB_WITH_NOTIFICATION_RECORDER)
    a.goto("/")
    expect(a.locator("#chat-list .chat-item")).to_have_count(1)
    send(b, "Psst, are you there?")
    wait_until(lambda: a.evaluate("() => window.shown.length") > 0, "a notification from the tab")
    assert a.evaluate("() => window.shown[0]") == {"title": "Bob", "body": "Psst, are you there?", "tag": chat_id}


def test_background_notifications_register_a_push_target_and_unsubscribe(pages, names, node):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    [alice] = names("alice")
    headers = auth(node, alice)  # another device of alice's, to look at her push targets

    def targets() -> list[dict]:
        response = httpx.get(f"{node.url}/api/push/targets", headers=headers)
        assert response.status_code == 200, response.text
        return response.json()["targets"]

    a = pages.login(alice)
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    keys = {"p256dh": b64url(point), "auth": b64url(os.urandom(16))}
    # A push service that says yes: this machine has none, and Playwright's contexts no Push API.
    a.add_init_script(f"window.SUBSCRIPTION_KEYS = {json.dumps(keys)};\n{FAKE_PUSH_SERVICE}")
    a.context.grant_permissions(["notifications"])
    a.reload()  # allowed before: notifications are on, and the browser is subscribed at start
    wait_until(lambda: len(targets()) == 1, "a push target")
    [target] = targets()
    assert target["kind"] == "webpush" and target["endpoint"] == a.evaluate("() => window.endpoints[0]")
    vapid = httpx.get(f"{node.url}/api/push/vapid").json()["public_key"]
    assert a.evaluate("() => window.subscribedWith") == [{"userVisibleOnly": True, "key": vapid}]
    a.click("#open-settings")
    expect(a.locator("#settings-notify")).to_be_checked()
    expect(a.locator("#settings-notify-hint")).to_have_text(
        "On this browser, for messages that arrive while the tab is in the background or closed.")
    expect(a.locator("#settings-push-unavailable")).to_be_hidden()

    a.click("#settings-notify")  # off: unsubscribed, and the target deleted
    expect(a.locator("#settings-notify")).not_to_be_checked()
    wait_until(lambda: targets() == [], "the target deleted")
    wait_until(lambda: a.evaluate("() => window.pushCalls") == ["subscribe", "unsubscribe"], "unsubscribing")

    a.click("#settings-notify")  # on again
    expect(a.locator("#settings-notify")).to_be_checked()
    wait_until(lambda: [t["endpoint"] for t in targets()] == [a.evaluate("() => window.endpoints[1]")], "a new target")

    a.click("#settings-back")
    a.click("#logout")  # the node deletes the device's targets, the browser unsubscribes
    a.click("#confirm-ok")
    expect(a.locator("#login-view")).to_be_visible()
    wait_until(lambda: a.evaluate("() => window.pushCalls") == ["subscribe", "unsubscribe", "subscribe", "unsubscribe"],
               "unsubscribing at logout")
    wait_until(lambda: targets() == [], "the node deleting the logged-out device's target")  # in the push plugin's pump
    assert a.evaluate("() => localStorage.getItem('chatnode.push.target')") is None


def test_phone_layout_and_keyboard(pages, names):
    alice, bob = names("alice", "bob")
    b = pages.login(bob)
    a = pages.login(alice, viewport=PHONE, is_mobile=True, has_touch=True)
    expect(a.locator("#conversation")).to_be_hidden()  # one pane at a time
    open_direct(a, bob)
    expect(a.locator("#sidebar")).to_be_hidden()
    expect(a.locator("#back")).to_be_visible()
    send(a, "Sent from my phone")
    open_chat(b, "Alice")
    send(b, "Looks good on a small screen?")
    expect(a.locator("#message-list .msg.theirs .text")).to_have_text(["Looks good on a small screen?"])
    shot(a, "08-phone")
    a.click("#back")
    expect(a.locator("#sidebar")).to_be_visible()
    expect(a.locator("#conversation")).to_be_hidden()
    a.go_back()  # the browser's back button too
    expect(a.locator("#conversation")).to_be_visible()

    # the keyboard: every control has a name, Enter sends, Escape closes dialogs
    d = pages.login(alice)
    d.keyboard.press("Tab")
    focused = d.evaluate("() => document.activeElement.getAttribute('aria-label') || document.activeElement.textContent")
    assert focused
    d.focus("#new-group")
    d.keyboard.press("Enter")
    expect(d.locator("#group-dialog")).to_be_visible()
    expect(d.locator("#group-title")).to_be_focused()
    d.keyboard.press("Escape")
    expect(d.locator("#group-dialog")).to_be_hidden()
    unnamed = d.evaluate("""() => [...document.querySelectorAll('button, input, textarea, select')]
        .filter((el) => el.checkVisibility() && el.type !== 'file')
        .filter((el) => !(el.getAttribute('aria-label') || el.labels?.length || el.textContent.trim()))
        .map((el) => el.outerHTML.slice(0, 80))""")
    assert unnamed == []


def test_settings_name_privacy_devices_and_blocks(pages, names, node):
    alice, bob, carol = names("alice", "bob", "carol")
    headers = auth(node, alice)  # a second device of alice's, to be logged out from Settings
    carol_id = httpx.get(f"{node.url}/api/users", params={"prefix": carol}, headers=headers).json()["users"][0]["id"]
    assert httpx.put(f"{node.url}/api/blocks/{carol_id}", headers=headers).status_code == 204
    b = pages.login(bob)
    open_direct(b, alice)
    send(b, "Hello Alice")
    a = pages.login(alice)

    a.focus("#open-settings")  # reachable by keyboard from the chat list header
    a.keyboard.press("Enter")
    expect(a.locator("#settings-view")).to_be_visible()
    expect(a.locator("#chat-list")).to_be_hidden()
    expect(a.locator("#settings-title")).to_be_focused()
    expect(a.locator("#settings-display-name")).to_have_value("Alice")
    expect(a.locator("#settings-read-receipts")).to_be_checked()
    expect(a.locator("#device-list .device")).to_have_count(2)
    expect(a.locator("#device-list .device .role-badge")).to_have_text(["This device"])
    expect(a.locator("#blocked-list .member")).to_have_count(1)

    a.fill("#settings-display-name", "Alice Wonder")
    a.press("#settings-display-name", "Enter")
    expect(a.locator("#settings-name")).to_have_text("Alice Wonder")
    expect(b.locator("#chat-list .chat-name")).to_have_text(["Alice Wonder"])  # live: no reload
    expect(b.locator("#chat-title")).to_have_text("Alice Wonder")
    a.click("#settings-read-receipts")
    a.select_option("#settings-last-seen", "nobody")
    expect(a.locator("#settings-read-receipts")).not_to_be_checked()
    expect(a.locator("#settings-read-receipts")).to_be_enabled()  # saved
    expect(a.locator("#settings-last-seen")).to_be_enabled()
    shot(a, "10-settings", animations="disabled")

    a.reload()  # what the node keeps (GET /api/me), not what the page remembered
    expect(a.locator("#settings-view")).to_be_visible()
    expect(a.locator("#settings-display-name")).to_have_value("Alice Wonder")
    expect(a.locator("#settings-read-receipts")).not_to_be_checked()
    expect(a.locator("#settings-last-seen")).to_have_value("nobody")
    me = httpx.get(f"{node.url}/api/me", headers=headers).json()
    assert me["user"]["display_name"] == "Alice Wonder"
    assert me["settings"] == {"read_receipts": False, "last_seen": "nobody"}

    a.locator("#device-list .device button", has_text="Log out").click()
    a.click("#confirm-ok")
    expect(a.locator("#device-list .device")).to_have_count(1)
    assert httpx.get(f"{node.url}/api/me", headers=headers).status_code == 401
    a.click("#blocked-list [aria-label='Unblock Carol']")
    expect(a.locator("#blocked-empty")).to_be_visible()

    a.keyboard.press("Escape")  # back to the chats, focus where it was
    expect(a.locator("#chat-list")).to_be_visible()
    expect(a.locator("#open-settings")).to_be_focused()
    b.reload()  # bob sees the new name
    expect(b.locator("#chat-list .chat-name")).to_have_text(["Alice Wonder"])
    open_chat(a, "Bob")
    send(a, "Hi Bob")  # sending reads what came before; with receipts off bob is not told
    expect(b.locator("#message-list .msg.theirs .text")).to_have_text(["Hi Bob"])
    expect(own_status(b, "Hello Alice")).to_have_attribute("data-status", "delivered")

    p = pages.login(bob, viewport=PHONE, is_mobile=True, has_touch=True)
    p.click("#open-settings")
    expect(p.locator("#settings-view")).to_be_visible()
    assert p.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    shot(p, "11-settings-phone")
    p.click("#settings-back")
    expect(p.locator("#chat-list")).to_be_visible()


# -- helpers -------------------------------------------------------------------------------


SEEK = """(media, to) => new Promise((resolve, reject) => {
    media.addEventListener('seeked', () => resolve(media.currentTime), { once: true });
    media.addEventListener('error', () => reject(new Error('media error')), { once: true });
    media.currentTime = to;
})"""

HIDDEN_TAB_WITH_NOTIFICATION_SPY = """
Object.defineProperty(document, 'visibilityState', { get: () => 'hidden' });
Object.defineProperty(document, 'hidden', { get: () => true });
window.shown = [];
window.asked = 0;
let permission = 'default';
class Spy {
  constructor(title, options) { window.shown.push({ title, body: options.body, tag: options.tag }); }
  close() {}
  static get permission() { return permission; }
  static requestPermission() { window.asked += 1; permission = 'granted'; return Promise.resolve(permission); }
}
window.Notification = Spy;
"""


HIDDEN_TAB_WITH_NOTIFICATION_RECORDER = """
Object.defineProperty(document, 'visibilityState', { get: () => 'hidden' });
Object.defineProperty(document, 'hidden', { get: () => true });
window.shown = [];
const RealNotification = window.Notification;
window.Notification = class extends RealNotification {
  constructor(title, options) {
    super(title, options);
    window.shown.push({ title, body: options.body, tag: options.tag });
  }
};
"""

# The client's service worker registration as the page sees it.
REGISTRATION = """async () => {
    const r = await navigator.serviceWorker.getRegistration();
    return r ? { scope: r.scope, script: r.active && r.active.scriptURL, state: r.active && r.active.state } : null;
}"""

NOTIFICATIONS = """async () => {
    const r = await navigator.serviceWorker.getRegistration();
    return (await r.getNotifications()).map((n) => ({ title: n.title, body: n.body, tag: n.tag, data: n.data }));
}"""

NOTIFICATIONS_IN_WORKER = """async () => (await self.registration.getNotifications())
    .map((n) => ({ title: n.title, body: n.body, tag: n.tag, data: n.data }))"""

# PushManager as in a browser whose push service answers: subscriptions with the keys the
# test made, recorded calls.
FAKE_PUSH_SERVICE = """
window.pushCalls = [];
window.endpoints = [];
window.subscribedWith = [];
let current = null;
const b64url = (buffer) => btoa(String.fromCharCode(...new Uint8Array(buffer)))
  .replace(/[+]/g, '-').replace(/[/]/g, '_').replace(/=+$/, '');
PushManager.prototype.subscribe = async function (options) {
  window.pushCalls.push('subscribe');
  window.subscribedWith.push({ userVisibleOnly: options.userVisibleOnly, key: b64url(options.applicationServerKey) });
  const endpoint = `https://push.example.net/send/${crypto.randomUUID()}`;
  window.endpoints.push(endpoint);
  const keys = window.SUBSCRIPTION_KEYS;
  current = {
    endpoint,
    options: { userVisibleOnly: true, applicationServerKey: new Uint8Array(options.applicationServerKey).buffer },
    toJSON: () => ({ endpoint, expirationTime: null, keys }),
    unsubscribe: async () => { window.pushCalls.push('unsubscribe'); current = null; return true; },
  };
  return current;
};
PushManager.prototype.getSubscription = async function () { return current; };
"""


class PushDevTools:
    """Delivers push messages to the client's service worker through the Chrome DevTools
    Protocol (ServiceWorker.deliverPushMessage), as its push service would."""

    def __init__(self, page, origin: str) -> None:
        self.page = page
        self.origin = origin
        self.registrations: dict[str, str] = {}
        self.cdp = page.context.new_cdp_session(page)
        self.cdp.on("ServiceWorker.workerRegistrationUpdated", self._updated)
        self.cdp.send("ServiceWorker.enable")
        deadline = time.monotonic() + 10
        while f"{origin}/" not in self.registrations:
            assert time.monotonic() < deadline, f"no service worker registration for {origin}: {self.registrations}"
            page.wait_for_timeout(50)  # events arrive while Playwright runs

    def _updated(self, event) -> None:
        for registration in event["registrations"]:
            if not registration["isDeleted"]:
                self.registrations[registration["scopeURL"]] = registration["registrationId"]

    def deliver(self, payload: dict) -> None:
        self.cdp.send("ServiceWorker.deliverPushMessage", {
            "origin": self.origin, "registrationId": self.registrations[f"{self.origin}/"],
            "data": json.dumps(payload),
        })


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def wait_until(predicate, what: str, timeout: float = 10.0) -> None:
    """Until `predicate()` holds (a Playwright error counts as not yet: a page between two
    states); fails the test naming `what` after `timeout`."""

    def holds() -> bool:
        try:
            return predicate()
        except playwright_api.Error:
            return False

    try:
        wait_until_sync(holds, timeout, interval=0.1)
    except trio.TooSlowError:
        raise AssertionError(f"timed out waiting for {what}") from None


def auth(node: NodeProcess, username: str) -> dict[str, str]:
    token = httpx.post(f"{node.url}/api/login", json={"username": username, "password": PASSWORD}).json()["token"]
    return {"Authorization": f"Bearer {token}"}


def drop_file(page, target: str, name: str, mime: str, data: bytes) -> None:
    """Drag a file from outside the browser and drop it on `target`."""
    drop_files(page, target, [(name, mime, data)])


def drop_files(page, target: str, files: list[tuple[str, str, bytes]]) -> None:
    """Drag several files (name, type, bytes) at once and drop them on `target`."""
    handle = page.evaluate_handle(
        """(files) => {
            const dt = new DataTransfer();
            for (const [name, mime, bytes] of files) {
                dt.items.add(new File([new Uint8Array(bytes)], name, { type: mime }));
            }
            return dt;
        }""",
        [[name, mime, list(data)] for name, mime, data in files],
    )
    for event in ("dragenter", "dragover", "drop"):
        page.dispatch_event(target, event, {"dataTransfer": handle})


def tone(seconds: float, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                               for i in range(int(seconds * rate))))
    return out.getvalue()


def lake_photo() -> bytes:
    """A 960x640 picture: sky, sun, hills and water (Pillow ships with the media plugin)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (960, 640))
    draw = ImageDraw.Draw(image)
    for y in range(400):  # sky, dawn to day
        t = y / 400
        draw.line([(0, y), (960, y)], fill=(int(250 - 120 * t), int(170 + 40 * t), int(120 + 120 * t)))
    draw.ellipse((600, 230, 720, 350), fill=(255, 214, 120))
    draw.polygon([(0, 400), (180, 250), (360, 400)], fill=(60, 90, 80))
    draw.polygon([(250, 400), (480, 210), (760, 400)], fill=(45, 75, 70))
    for y in range(400, 640):  # water
        t = (y - 400) / 240
        draw.line([(0, y), (960, y)], fill=(int(70 - 40 * t), int(120 - 50 * t), int(160 - 40 * t)))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()
