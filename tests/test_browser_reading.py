"""Reading in the web client, in Chromium: the photo viewer (centred, fitted, zoom, moving
between the chat's photos, download), the unread divider and the "jump to the latest"
button in a long chat, the day label that stays at the top without overlapping text,
12-hour times, search that finds nothing, the notification offer on a phone, and what a
reconnect must not lose (a notification during the replay, a `read` lost with the connection).
The node, the browser and the helpers are those of test_browser.py."""

from __future__ import annotations

import io
import json
import re
import threading

import httpx
import pytest
import trio
from test_browser import (  # noqa: F401 (fixtures)
    DESKTOP,
    PASSWORD,
    PHONE,
    auth,
    browser,
    expect,
    lake_photo,
    names,
    node,
    open_chat,
    open_direct,
    own_status,
    pages,
    send,
    shot,
    wait_until,
)

from node.client import ChatClient

pytestmark = pytest.mark.browser


def picture(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), color)
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.2, height * 0.2, width * 0.8, height * 0.8), fill=(250, 250, 250))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def box_of(locator) -> dict:
    box = locator.bounding_box()
    assert box, "not on screen"
    return box


def centre(box: dict) -> tuple[float, float]:
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def test_photo_viewer_centres_fits_zooms_moves_between_photos_and_downloads(pages, names, node, tmp_path):
    if httpx.post(f"{node.url}/api/media").status_code == 404:
        pytest.skip("this node has no media plugin")
    alice, bob = names("alice", "bob")
    a, b = pages.login(alice), pages.login(bob)
    open_direct(a, bob)
    send(a, "Three from the trip")
    files = {"lake.jpg": lake_photo(), "tower.png": picture(480, 900, (40, 90, 160)),
             "stamp.png": picture(200, 150, (160, 60, 40))}
    open_chat(b, "Alice")
    thumbs = b.locator("#message-list .media-image .media-open")
    for count, (name, data) in enumerate(files.items(), 1):  # one by one: in this order
        (tmp_path / name).write_bytes(data)
        a.set_input_files("#file-input", str(tmp_path / name))
        a.click("#attach-send")
        expect(thumbs).to_have_count(count)

    thumbs.nth(1).click()  # the tall one
    viewer, image, stage = b.locator("#viewer-dialog"), b.locator("#viewer-image"), b.locator("#viewer-stage")
    expect(viewer).to_be_visible()
    expect(b.locator("#viewer-count")).to_have_text("2 of 3")
    expect(b.locator("#viewer-caption")).to_contain_text("Alice")
    wait_until(lambda: image.evaluate("img => img.complete && img.naturalHeight") == 900, "the full photo")
    area, photo = box_of(stage), box_of(image)
    assert abs(centre(photo)[0] - centre(area)[0]) < 2 and abs(centre(photo)[1] - centre(area)[1]) < 2  # centred
    assert photo["height"] == pytest.approx(area["height"], abs=2) and photo["width"] < area["width"]  # fitted
    assert photo["width"] / photo["height"] == pytest.approx(480 / 900, abs=0.01)  # not stretched
    shot(b, "14-viewer", animations="disabled")

    b.click("#viewer-zoom-in")
    assert box_of(image)["width"] == pytest.approx(photo["width"] * 1.5, rel=0.02)
    expect(b.locator("#viewer-zoom-out")).to_be_enabled()
    b.click("#viewer-zoom-out")
    assert box_of(image)["width"] == pytest.approx(photo["width"], rel=0.02)
    expect(b.locator("#viewer-zoom-out")).to_be_disabled()  # fitted is as small as it gets
    b.mouse.move(*centre(photo))
    b.mouse.wheel(0, -200)
    wait_until(lambda: box_of(image)["width"] > photo["width"] * 1.1, "zooming with the wheel")
    b.mouse.click(*centre(area))  # a click on a zoomed photo: back to fitted
    wait_until(lambda: abs(box_of(image)["width"] - photo["width"]) < 2, "fitted again")
    b.mouse.click(*centre(area))  # and in
    wait_until(lambda: box_of(image)["width"] > photo["width"] * 2, "zoomed by a click")
    b.keyboard.press("-")
    b.keyboard.press("-")
    b.keyboard.press("-")
    wait_until(lambda: abs(box_of(image)["width"] - photo["width"]) < 2, "zoomed out by keys")

    b.keyboard.press("ArrowRight")
    expect(b.locator("#viewer-count")).to_have_text("3 of 3")
    expect(b.locator("#viewer-next")).to_be_disabled()
    wait_until(lambda: image.evaluate("img => img.complete && img.naturalWidth") == 200, "the small photo")
    small = box_of(image)
    assert small["width"] == pytest.approx(200, abs=1)  # not blown up past its size
    assert abs(centre(small)[0] - centre(area)[0]) < 2 and abs(centre(small)[1] - centre(area)[1]) < 2
    b.keyboard.press("ArrowLeft")
    b.click("#viewer-prev")
    expect(b.locator("#viewer-count")).to_have_text("1 of 3")
    expect(b.locator("#viewer-prev")).to_be_disabled()
    x, y = centre(area)  # a swipe to the left: the next one
    b.mouse.move(x + 150, y)
    b.mouse.down()
    b.mouse.move(x - 150, y, steps=6)
    b.mouse.up()
    expect(b.locator("#viewer-count")).to_have_text("2 of 3")

    with b.expect_download() as download:
        b.click("#viewer-download")
    assert download.value.suggested_filename == "tower.png"
    saved = download.value.path().read_bytes()
    assert saved[:8] == b"\x89PNG\r\n\x1a\n" and len(saved) > 1000
    b.keyboard.press("Escape")
    expect(viewer).to_be_hidden()

    p = pages.login(bob, viewport=PHONE, is_mobile=True, has_touch=True)
    open_chat(p, "Alice")
    p.locator("#message-list .media-image .media-open").first.click()
    expect(p.locator("#viewer-count")).to_have_text("1 of 3")
    image = p.locator("#viewer-image")
    wait_until(lambda: image.evaluate("img => img.complete && img.naturalWidth") == 960, "the photo on the phone")
    area, photo = box_of(p.locator("#viewer-stage")), box_of(image)
    assert photo["width"] == pytest.approx(PHONE["width"], abs=2)  # as wide as the phone
    assert abs(centre(photo)[1] - centre(area)[1]) < 2
    expect(p.locator("#viewer-next")).to_be_visible()
    shot(p, "15-viewer-phone", animations="disabled")


def test_unread_divider_jump_to_latest_and_the_day_band(pages, names, node):
    alice, bob = names("alice", "bob")
    words = "a longer line so that the chat is several screens tall: " * 2

    async def bob_writes(start: int, count: int, prefix: str) -> None:
        async with ChatClient(node.url) as client:
            await client.login(bob, PASSWORD)
            chat = await client.open_direct(username=alice)
            async with client.connect() as conn:
                batch = [{"chat": chat["id"], "text": f"{prefix} {i}: {words}"} for i in range(start, start + count)]
                await conn.send_many(batch)

    def write(start: int, count: int, prefix: str) -> None:
        writer = threading.Thread(target=trio.run, args=(bob_writes, start, count, prefix))  # trio in its own thread
        writer.start()
        writer.join(30)

    async def bob_comes_and_goes(times: int) -> None:
        """Bob's presence changes (online, offline) `times` times: each redraws Alice's chat."""
        async with ChatClient(node.url) as client:
            await client.login(bob, PASSWORD)
            for _ in range(times):
                async with client.connect() as conn:
                    await conn.synced.wait()

    write(0, 30, "earlier")
    a = pages.login(alice)
    open_chat(a, "Bob")  # read up to here
    expect(a.locator("#message-list .msg")).to_have_count(30)
    expect(a.locator("#message-list .unread-divider")).to_have_text("30 unread messages")
    a.evaluate("() => { location.hash = ''; }")  # the chat closes
    expect(a.locator("#no-chat")).to_be_visible()
    write(0, 40, "later")
    expect(a.locator("#chat-list .unread")).to_have_text("40")
    open_chat(a, "Bob")
    divider = a.locator("#message-list .unread-divider")
    expect(divider).to_have_text("40 unread messages")
    expect(divider).to_have_attribute("role", "separator")
    after = a.locator("#message-list .unread-divider + .msg .text")
    expect(after).to_contain_text("later 0:")  # the first unread one follows it
    messages = a.locator("#messages")
    wait_until(lambda: 0 <= box_of(divider)["y"] - box_of(messages)["y"] < 90, "the divider at the top")
    jump = a.locator("#jump-latest")
    expect(jump).to_be_visible()  # the newest is far below
    expect(a.locator("#jump-count")).to_be_hidden()
    shot(a, "19-unread", animations="disabled")

    # the day stays at the top on an opaque band across the list: text goes under it, not through it
    a.locator("#messages").evaluate("el => { el.scrollTop = el.scrollHeight / 2; }")
    band = a.locator("#message-list .row.day").first
    wait_until(lambda: abs(box_of(band)["y"] - box_of(messages)["y"]) < 1.5, "the day label stuck at the top")
    stuck, listed = box_of(band), box_of(a.locator("#message-list"))
    assert stuck["width"] == pytest.approx(listed["width"], abs=1)
    assert band.evaluate("el => getComputedStyle(el).backgroundColor") not in ("transparent", "rgba(0, 0, 0, 0)")
    assert re.fullmatch(r"rgb\(\d+, \d+, \d+\)", band.evaluate("el => getComputedStyle(el).backgroundColor"))  # opaque
    for x in (stuck["x"] + 4, stuck["x"] + stuck["width"] / 2, stuck["x"] + stuck["width"] - 4):
        on_top = a.evaluate("([x, y]) => !!document.elementFromPoint(x, y).closest('.row.day')",
                            [x, stuck["y"] + stuck["height"] / 2])
        assert on_top, f"something is drawn over the day label at x={x}"
    shot(a, "20-day-band", animations="disabled")

    jump.click()
    at_end = "el => el.scrollHeight - el.scrollTop - el.clientHeight"
    wait_until(lambda: messages.evaluate(at_end) < 5, "the end of the chat")
    expect(jump).to_be_hidden()
    messages.evaluate("el => { el.scrollTop = el.scrollHeight - el.clientHeight - 1200; }")
    expect(jump).to_be_visible()
    write(40, 2, "newest")
    expect(a.locator("#jump-count")).to_have_text("2")
    expect(jump).to_have_attribute("aria-label", "Jump to the latest message (2 new)")
    assert messages.evaluate(at_end) > 1000  # reading stays where it was
    jump.focus()
    # Redraws while the list glides to the end (Bob's presence) must not stop it halfway.
    visits = threading.Thread(target=trio.run, args=(bob_comes_and_goes, 10))
    visits.start()
    a.keyboard.press("Enter")
    visits.join(30)
    wait_until(lambda: messages.evaluate(at_end) < 5, "the end of the chat, by keyboard")
    expect(a.locator("#message-list .msg .text").last).to_contain_text("newest 41:")
    expect(jump).to_be_hidden()


def test_times_are_12_hour_without_a_leading_zero_where_the_locale_says_so(pages, names):
    alice, bob = names("alice", "bob")
    a = pages.login(alice, locale="en-US", timezone_id="America/New_York")
    format_time = """async (parts) => {
        const { time } = await import('/static/js/format.js');
        return time(new Date(...parts).getTime()).replace(/\\s/g, ' ');
    }"""
    assert a.evaluate(format_time, [2026, 0, 5, 3, 15]) == "3:15 AM"
    assert a.evaluate(format_time, [2026, 0, 5, 15, 5]) == "3:05 PM"
    assert a.evaluate(format_time, [2026, 0, 5, 11, 59]) == "11:59 AM"
    open_direct(a, bob)
    send(a, "What time is it?")
    shown = a.locator("#message-list .msg .meta time").first.inner_text().replace("\u202f", " ")
    assert re.fullmatch(r"(1[0-2]|[1-9]):[0-5]\d [AP]M", shown), shown
    g = pages.login(bob, locale="en-GB", timezone_id="Europe/London")  # 24 hours: as the locale writes them
    assert g.evaluate(format_time, [2026, 0, 5, 15, 5]) == "15:05"


def test_a_search_that_finds_nothing_says_so(pages, names):
    alice, bob, carol = names("alice", "bob", "carol")
    a = pages.login(alice)
    open_direct(a, bob)
    empty = a.locator("#search-empty")
    a.fill("#search", "zzqx")
    expect(empty).to_have_text("No chats, people or messages match “zzqx”.")
    expect(a.locator("#chat-list .chat-item")).to_have_count(0)
    a.fill("#search", "bo")
    expect(a.locator("#chat-list .chat-item")).to_have_count(1)
    expect(empty).to_be_hidden()
    a.fill("#search", carol)  # no chat, but a person to start one with
    expect(a.locator("#people-list .chat-item")).to_have_count(1)
    expect(empty).to_be_hidden()
    a.fill("#search", "zzqx")
    expect(empty).to_be_visible()
    a.press("#search", "Escape")
    expect(empty).to_be_hidden()
    expect(a.locator("#chat-list .chat-item")).to_have_count(1)


def test_the_notification_offer_on_a_phone_is_one_line_and_goes_away_by_itself(pages, names, node):
    [alice] = names("alice")
    p = pages.new(PHONE, is_mobile=True, has_touch=True)
    p.clock.install()
    p.reload()
    p.fill("#auth-username", alice)
    p.fill("#auth-password", PASSWORD)
    p.click("#auth-submit")
    banner = p.locator("#notify-banner")
    expect(banner).to_be_visible()
    # measured once online: the "Connecting…" banner above it moves it down while it shows
    expect(p.locator("#conn-banner[data-state='online']")).to_be_attached()
    height = box_of(banner)["height"]
    assert height <= 44, f"the banner is {height} px tall"
    assert box_of(p.locator("#notify-on"))["y"] - box_of(banner)["y"] < 10  # one line: the button beside the text
    expect(p.locator("#notify-later")).to_have_attribute("aria-label", "Not now")
    shot(p, "21-notify-banner-phone")
    p.clock.run_for(16_000)  # it goes away by itself
    expect(banner).to_be_hidden()
    for shown in (True, True, False):  # back at later visits, but not forever without an answer
        p.reload()
        expect(p.locator("#me-name")).not_to_be_empty()
        if shown:
            expect(banner).to_be_visible()
        else:
            expect(p.locator("#chat-list-empty")).to_be_visible()
            expect(banner).to_be_hidden()

    d = pages.login(alice, viewport=DESKTOP, notifications_banner=True)  # a choice is kept: Not now
    expect(d.locator("#notify-banner")).to_be_visible()
    d.click("#notify-later")
    expect(d.locator("#notify-banner")).to_be_hidden()
    d.reload()
    expect(d.locator("#me-name")).not_to_be_empty()
    expect(d.locator("#chat-list-empty")).to_be_visible()
    expect(d.locator("#notify-banner")).to_be_hidden()


# A tab whose visibility the test sets (`window.tabHidden`), in a browser that allows
# notifications and records them.
TAB_WITH_NOTIFICATIONS = """
window.tabHidden = false;
Object.defineProperty(document, 'visibilityState', { get: () => (window.tabHidden ? 'hidden' : 'visible') });
Object.defineProperty(document, 'hidden', { get: () => window.tabHidden });
window.shown = [];
window.Notification = class {
  constructor(title, options) { window.shown.push({ title, body: options.body }); }
  close() {}
  static get permission() { return 'granted'; }
  static requestPermission() { return Promise.resolve('granted'); }
};
"""


class SocketRelay:
    """The page's chat socket, relayed to the real node by Playwright (route_web_socket),
    which can hold back `synced` (a replay that takes long), drop the page's `read`s (lost
    with the connection), refuse some as the node does while a cluster moves the chat
    (`unavailable`), and cut the connection. Its callbacks run while the test waits in a
    Playwright call."""

    def __init__(self, page) -> None:
        self.hold_synced = False
        self.drop_reads = False
        self.refuse_reads = 0  # how many `read`s to answer with `unavailable` (not passed on)
        self.opened = 0  # sockets the page opened
        self.held: list[dict] = []
        self.reads: list[tuple[str, dict]] = []  # ("sent" | "dropped", event)
        self.messages: list[str] = []  # texts of the entries passed to the page
        self.route = self.server = None
        page.route_web_socket(re.compile(r"^wss?://"), self._open)

    def _open(self, route) -> None:
        self.route, self.server = route, route.connect_to_server()
        self.opened += 1
        route.on_message(self._to_node)
        self.server.on_message(self._to_page)

    def _to_node(self, frame) -> None:
        events = json.loads(frame)
        events = events if isinstance(events, list) else [events]
        kept = []
        for event in events:
            if event["type"] == "read" and self.refuse_reads:
                self.refuse_reads -= 1
                self.reads.append(("refused", event))
                self.route.send(json.dumps({"type": "error", "code": "unavailable",
                                            "message": "the node that owns this chat left or failed before answering; retry"}))
                continue
            if event["type"] == "read":
                self.reads.append(("dropped" if self.drop_reads else "sent", event))
                if self.drop_reads:
                    continue
            kept.append(event)
        if kept:
            self.server.send(json.dumps(kept if len(kept) > 1 else kept[0]))

    def _to_page(self, frame) -> None:
        events = json.loads(frame)
        events = events if isinstance(events, list) else [events]
        self.messages += [e.get("text", "") for e in events if e["type"] == "message"]
        if self.hold_synced:
            self.held += [e for e in events if e["type"] == "synced"]
            events = [e for e in events if e["type"] != "synced"]
        if events:
            self.route.send(json.dumps(events))

    def release_synced(self) -> None:
        self.hold_synced = False
        for event in self.held:
            self.route.send(json.dumps(event))
        self.held = []

    def cut(self) -> None:
        self.server.close(code=1011)
        self.route.close(code=1011)  # the page reconnects


def test_a_read_the_node_refuses_for_a_moment_is_sent_again_on_the_same_socket(pages, names):
    """In a cluster a `read` can meet its chat changing hands and be refused with
    `unavailable`, an `error` without `ref` (docs/web-client.md): the page sends it again,
    without reconnecting, and the sender sees the message read."""
    alice, bob = names("alice", "bob")
    a = pages.login(alice)
    open_direct(a, bob)
    send(a, "read me, eventually")
    b = pages.new()
    relay = SocketRelay(b)
    b.fill("#auth-username", bob)
    b.fill("#auth-password", PASSWORD)
    b.click("#auth-submit")
    expect(b.locator("#conn-banner[data-state='online']")).to_be_attached()
    relay.refuse_reads = 1
    open_chat(b, "Alice")
    expect(own_status(a, "read me, eventually")).to_have_attribute("data-status", "read")
    assert [kind for kind, _ in relay.reads] == ["refused", "sent"]
    assert relay.reads[0][1] == relay.reads[1][1]
    assert relay.opened == 1


def test_a_live_message_during_a_replay_notifies_and_a_lost_read_is_sent_again(pages, names, node):
    alice, bob, carol = names("alice", "bob", "carol")
    chats: dict[str, str] = {}

    def write(sender: str, text: str) -> None:
        async def go() -> None:
            async with ChatClient(node.url) as client:
                await client.login(sender, PASSWORD)
                chat = await client.open_direct(username=bob)
                chats[sender] = chat["id"]
                async with client.connect() as conn:
                    await conn.send_text(chat["id"], text)

        trio.run(go)

    write(alice, "hi from alice")
    write(carol, "hi from carol")
    b = pages.new()
    b.add_init_script(TAB_WITH_NOTIFICATIONS)
    b.reload()
    relay = SocketRelay(b)
    b.fill("#auth-username", bob)
    b.fill("#auth-password", PASSWORD)
    b.click("#auth-submit")
    expect(b.locator("#chat-list .chat-item")).to_have_count(2)

    async def from_bobs_phone() -> None:  # arrives live: the page holds it
        async with ChatClient(node.url) as client:
            await client.login(bob, PASSWORD)
            async with client.connect() as conn:
                await conn.send_text(chats[carol], "see you at noon")

    trio.run(from_bobs_phone)
    expect(b.locator("#chat-list")).to_contain_text("see you at noon")

    # Hidden, cut off, back: what was sent meanwhile is replayed (no notification: it is
    # in the list), and a message sent during the replay, before `synced`, is live.
    b.evaluate("() => { window.tabHidden = true; }")
    b.context.set_offline(True)
    expect(b.locator("#conn-banner")).to_contain_text("offline")
    write(alice, "sent while bob was away")
    relay.hold_synced = True
    b.context.set_offline(False)
    expect(b.locator("#chat-list")).to_contain_text("sent while bob was away")
    write(carol, "live during the replay")
    wait_until(lambda: b.evaluate("() => window.shown.length") > 0, "a notification")
    assert b.evaluate("() => window.shown") == [{"title": "Carol", "body": "live during the replay"}]

    async def react() -> None:  # a reaction is never replayed: one during the replay is live
        async with ChatClient(node.url) as client:
            await client.login(carol, PASSWORD)
            mine = [m for m in await client.history(chats[carol]) if m.get("text") == "see you at noon"]
            await client.react(chats[carol], mine[0]["seq"], "👍")

    trio.run(react)
    wait_until(lambda: b.evaluate("() => window.shown.length") > 1, "a notification of the reaction")
    assert b.evaluate("() => window.shown[1]") == {"title": "Carol",
                                                    "body": "Reacted 👍 to your message: “see you at noon”"}
    relay.release_synced()

    # Visible again; reading both chats, whose `read`s are lost with the connection.
    # Another device marks Carol's chat as unread; after the reconnect the read of Alice's
    # chat is sent again, the one of Carol's is not (it would undo the mark).
    b.evaluate("() => { window.tabHidden = false; document.dispatchEvent(new Event('visibilitychange')); }")
    relay.drop_reads = True
    for name, user in (("Carol", carol), ("Alice", alice)):
        open_chat(b, name)
        wait_until(lambda: b.evaluate("() => true") and any(e["chat"] == chats[user] for _, e in relay.reads),  # noqa: B023
                   f"the read of {name}'s chat")
    phone = auth(node, bob)  # another device of Bob's

    def summary(user: str) -> dict:
        listed = httpx.get(f"{node.url}/api/chats", headers=phone).json()["chats"]
        return next(c for c in listed if c["id"] == chats[user])

    marked = httpx.patch(f"{node.url}/api/chats/{chats[carol]}/prefs", json={"marked_unread": True}, headers=phone)
    assert marked.status_code == 200, marked.text
    expect(b.locator("#chat-list .chat-item:has(.chat-name:text-is('Carol')) .unread.mark")).to_be_visible()
    relay.drop_reads = False
    relay.reads.clear()
    assert summary(alice)["read_seq"] < summary(alice)["last_seq"]  # the read was lost
    relay.cut()
    wait_until(lambda: b.evaluate("() => true") and summary(alice)["read_seq"] == summary(alice)["last_seq"],
               "the read of Alice's chat, sent again")
    assert [e["chat"] for _, e in relay.reads if e["type"] == "read"] == [chats[alice]]
    assert summary(carol)["marked_unread"] is True
    assert summary(carol)["read_seq"] < summary(carol)["last_seq"]
    expect(b.locator("#chat-list .chat-item:has(.chat-name:text-is('Alice')) .unread")).to_have_count(0)
