"""The web client's composer in Chromium: WhatsApp-style formatting rendered safely, the
bundled emoji picker, images pasted from the clipboard, several files dropped at once, the
length counter near the node's limit, and voice messages recorded with MediaRecorder (from
Chromium's fake microphone) and played inline. The node, the browser and the helpers are
those of test_browser.py."""

from __future__ import annotations

import io
import re

import httpx
import pytest
from test_browser import (  # noqa: F401 (fixtures)
    PHONE,
    auth,
    browser,
    drop_files,
    expect,
    names,
    node,
    open_chat,
    open_direct,
    pages,
    send,
    shot,
    tone,
    wait_until,
)

pytestmark = pytest.mark.browser


def png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def test_formatting_is_rendered_as_nodes_and_nothing_injects_html(pages, names):
    alice, bob = names("alice", "bob")
    a, b = pages.login(alice), pages.login(bob)
    open_direct(a, bob)
    send(a, "*bold* _italic_ ~gone~ `mono` and *_both_*")
    open_chat(b, "Alice")
    text = b.locator("#message-list .msg.theirs .text").last
    expect(text.locator("strong").first).to_have_text("bold")
    expect(text.locator("em").first).to_have_text("italic")
    expect(text.locator("s")).to_have_text("gone")
    expect(text.locator("code.code")).to_have_text("mono")
    expect(text.locator("strong > em")).to_have_text("both")
    expect(text).to_have_text("bold italic gone mono and both")  # the markers are gone
    expect(b.locator("#chat-list .chat-item .preview")).to_have_text("bold italic gone mono and both")

    a.fill("#compose-text", "```\nfor x in range(3):\n    print(x * 2)\n```")
    a.press("#compose-text", "Enter")
    block = b.locator("#message-list .msg.theirs .text pre.code-block code")
    expect(block).to_have_text("for x in range(3):\n    print(x * 2)")
    assert block.evaluate("el => getComputedStyle(el).whiteSpace") in ("pre", "pre-wrap")

    send(a, "snake_case_name, 2*3*4 and https://example.com/a_b/~c_d*e stay as they are")
    plain = b.locator("#message-list .msg.theirs .text").last
    expect(plain).to_have_text("snake_case_name, 2*3*4 and https://example.com/a_b/~c_d*e stay as they are")
    assert plain.locator("strong, em, s, code").count() == 0
    expect(plain.locator("a")).to_have_attribute("href", "https://example.com/a_b/~c_d*e")
    send(a, "_read https://example.com/x_y_")  # a marker inside an address is part of it
    link = b.locator("#message-list .msg.theirs .text").last.locator("em > a")
    expect(link).to_have_attribute("href", "https://example.com/x_y")

    attacks = [
        '<img src=x onerror="window.injected = 1">',
        "*<b>not a tag</b>* _<i onmouseover=alert(1)>x</i>_",
        "`<script>window.injected = 2</script>`",
        "```<svg onload=window.injected=3><style>*{display:none}</style>```",
        '~<a href="javascript:window.injected=4">click</a>~',
    ]
    for attack in attacks:
        send(a, attack)
    texts = b.locator("#message-list .msg.theirs .text")
    expect(texts).to_have_count(4 + len(attacks))
    expect(texts.nth(4)).to_have_text(attacks[0])
    expect(texts.nth(5).locator("strong")).to_have_text("<b>not a tag</b>")
    expect(texts.nth(5).locator("em")).to_have_text("<i onmouseover=alert(1)>x</i>")
    expect(texts.nth(6).locator("code")).to_have_text("<script>window.injected = 2</script>")
    expect(texts.nth(7).locator("pre")).to_have_text("<svg onload=window.injected=3><style>*{display:none}</style>")
    expect(texts.nth(8).locator("s")).to_have_text('<a href="javascript:window.injected=4">click</a>')
    tags = b.locator("#message-list .text").evaluate_all(
        "els => els.flatMap((el) => [...el.querySelectorAll('*')].map((n) => n.tagName.toLowerCase()))")
    assert set(tags) <= {"strong", "em", "s", "code", "pre", "a"}, tags
    assert b.locator("#message-list .text a[href^='javascript']").count() == 0
    texts.nth(5).hover()
    assert b.evaluate("() => window.injected") is None
    shot(b, "12-formatting")


def test_emoji_picker_searches_inserts_at_the_caret_and_is_keyboard_reachable(pages, names):
    alice, bob = names("alice", "bob")
    a = pages.login(alice)
    open_direct(a, bob)
    a.fill("#compose-text", "Great idea ")
    a.click("#emoji-toggle")
    panel = a.locator("#emoji-panel")
    expect(panel).to_be_visible()
    expect(a.locator("#emoji-search")).to_be_focused()
    expect(a.locator("#emoji-toggle")).to_have_attribute("aria-expanded", "true")
    tabs = a.locator("#emoji-tabs .emoji-tab")
    expect(tabs).to_have_count(9)  # Unicode's groups (no recent ones yet)
    assert a.locator("#emoji-grid .emoji").count() > 50
    a.click("#emoji-tabs [aria-label='Food & Drink']")
    expect(a.locator("#emoji-grid")).to_have_attribute("aria-label", "Food & Drink")
    expect(a.locator("#emoji-grid .emoji[aria-label='pizza']")).to_have_text("🍕")

    a.fill("#emoji-search", "thumbs up")
    first = a.locator("#emoji-grid .emoji").first
    expect(first).to_have_attribute("aria-label", "thumbs up")
    first.click()
    expect(a.locator("#compose-text")).to_have_value("Great idea 👍")
    expect(panel).to_be_visible()  # open for more

    a.fill("#emoji-search", "zzzq")
    expect(a.locator("#emoji-empty")).to_have_text("No emoji match “zzzq”.")
    expect(a.locator("#emoji-grid .emoji")).to_have_count(0)

    # by keyboard: down into the grid, across, Enter picks; Escape closes, back in the composer
    a.fill("#emoji-search", "heart")
    a.press("#emoji-search", "ArrowDown")
    focused = "() => document.activeElement.getAttribute('aria-label')"
    hearts = a.locator("#emoji-grid .emoji").evaluate_all("els => els.map((el) => el.getAttribute('aria-label'))")
    assert a.evaluate(focused) == hearts[0]
    a.keyboard.press("ArrowRight")
    assert a.evaluate(focused) == hearts[1]
    second = a.locator("#emoji-grid .emoji").nth(1).inner_text()
    a.keyboard.press("Enter")
    expect(a.locator("#compose-text")).to_have_value(f"Great idea 👍{second}")
    a.keyboard.press("Escape")
    expect(panel).to_be_hidden()
    expect(a.locator("#compose-text")).to_be_focused()

    # the caret decides where it goes
    a.evaluate("() => { const t = document.querySelector('#compose-text'); t.setSelectionRange(5, 5); }")
    a.click("#emoji-toggle")
    expect(a.locator("#emoji-tabs .emoji-tab").first).to_have_attribute("aria-label", "Recent")
    expect(a.locator("#emoji-grid .emoji").first).to_have_text(second)  # the newest first
    a.fill("#emoji-search", "rocket")
    a.locator("#emoji-grid .emoji[aria-label='rocket']").click()
    expect(a.locator("#compose-text")).to_have_value(f"Great🚀 idea 👍{second}")
    shot(a, "13-emoji")
    a.mouse.click(5, 300)  # a click elsewhere closes it
    expect(panel).to_be_hidden()
    a.press("#compose-text", "Enter")
    expect(a.locator("#message-list .msg.own .text")).to_have_text([f"Great🚀 idea 👍{second}"])

    p = pages.login(alice, viewport=PHONE, is_mobile=True, has_touch=True)
    open_chat(p, "Bob")
    p.click("#emoji-toggle")
    expect(p.locator("#emoji-grid .emoji").first).to_be_visible()
    assert p.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    box = p.locator("#emoji-panel").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]


def test_a_pasted_image_and_several_dropped_files_are_each_sent(pages, names, node):
    if httpx.post(f"{node.url}/api/media").status_code == 404:
        pytest.skip("this node has no media plugin")
    alice, bob = names("alice", "bob")
    a, b = pages.login(alice), pages.login(bob)
    open_direct(a, bob)
    send(a, "Screenshot coming")
    open_chat(b, "Alice")

    # a screenshot on the clipboard: browsers name it image.png
    a.locator("#compose-text").evaluate("""(el, bytes) => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], 'image.png', { type: 'image/png' }));
        el.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
    }""", list(png(300, 200, (30, 120, 200))))
    expect(a.locator("#attach-dialog")).to_be_visible()
    expect(a.locator("#attach-title")).to_have_text(re.compile(r"^Send pasted-\d{8}-\d{6}\.png$"))
    expect(a.locator("#attach-preview img")).to_be_visible()
    a.click("#attach-send")
    expect(b.locator("#message-list .media-image img")).to_have_count(1)

    # text pasted stays text: no dialog
    a.locator("#compose-text").evaluate("""(el) => {
        const dt = new DataTransfer();
        dt.setData('text/plain', 'just words');
        el.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
    }""")
    expect(a.locator("#attach-dialog")).to_be_hidden()

    # three files dropped together: one dialog, three messages
    drop_files(a, "#conversation", [
        ("red.png", "image/png", png(120, 80, (200, 40, 40))),
        ("notes.txt", "text/plain", b"shopping: milk, bread\n" * 20),
        ("hello.wav", "audio/wav", tone(seconds=1.0)),
    ])
    expect(a.locator("#attach-dialog")).to_be_visible()
    expect(a.locator("#attach-title")).to_have_text("Send 3 files")
    expect(a.locator("#attach-preview > *")).to_have_count(3)
    a.fill("#attach-caption", "All three")
    a.click("#attach-send")
    expect(b.locator("#message-list .media-image img")).to_have_count(2)
    expect(b.locator("#message-list .media-file .file-name")).to_have_text(["notes.txt"])
    expect(b.locator("#message-list .media-audio .player")).to_have_count(1)
    expect(b.locator("#message-list .msg.theirs .text")).to_have_text(["Screenshot coming", "All three"])  # one caption
    expect(a.locator("#uploads .upload")).to_have_count(0)


def test_a_long_message_shows_a_counter_and_a_sentence_instead_of_going_out(pages, names, node):
    limit = httpx.get(f"{node.url}/api/info").json()["limits"]["max_message_bytes"]
    alice, bob = names("alice", "bob")
    a = pages.login(alice)
    open_direct(a, bob)
    counter, error = a.locator("#compose-counter"), a.locator("#compose-error")
    a.fill("#compose-text", "a" * (limit - 2000))
    expect(counter).to_be_hidden()  # far from the limit: nothing to see
    a.fill("#compose-text", "a" * (limit - 300))
    expect(counter).to_have_text("300 left")
    expect(error).to_be_hidden()
    a.fill("#compose-text", "é" * (limit // 2 + 8))  # two bytes each: 8 characters too many
    expect(counter).to_have_text("8 too many")
    expect(error).to_have_text("This message is too long to send. Remove 8 characters, or send it in parts.")
    expect(a.locator("#send")).to_have_attribute("aria-disabled", "true")
    shot(a, "16-too-long")
    a.press("#compose-text", "Enter")
    a.click("#send", force=True)  # aria-disabled: still clickable, and still nothing goes out
    expect(error).to_be_visible()
    expect(a.locator("#message-list .msg")).to_have_count(0)  # nothing went out
    assert len(a.locator("#compose-text").input_value()) == limit // 2 + 8  # nothing was lost
    a.locator("#compose-text").press("End")
    for _ in range(8):
        a.keyboard.press("Backspace")
    expect(counter).to_have_text("0 left")
    expect(error).to_be_hidden()
    a.press("#compose-text", "Enter")
    expect(a.locator("#message-list .msg.own .text")).to_have_text(["é" * (limit // 2)])
    expect(a.locator("#message-list .msg.own .tick")).to_have_attribute("data-status", "sent")
    expect(counter).to_be_hidden()


def test_a_voice_message_is_recorded_sent_and_played_with_speed_and_seeking(pages, names, node):
    if httpx.post(f"{node.url}/api/media").status_code == 404:
        pytest.skip("this node has no media plugin")
    alice, bob = names("alice", "bob")
    a = pages.login(alice, notifications_banner=True, permissions=["microphone"])  # (no banner: asked by then)
    b = pages.login(bob)
    open_direct(a, bob)
    send(a, "Listen to this")
    open_chat(b, "Alice")
    record = a.locator("#record")
    expect(record).to_be_visible()  # the composer is empty: the microphone instead of Send
    expect(a.locator("#send")).to_be_hidden()
    a.fill("#compose-text", "x")
    expect(record).to_be_hidden()
    expect(a.locator("#send")).to_be_visible()
    a.fill("#compose-text", "")

    # click to start: a timer and a waveform, then Cancel: nothing is sent
    record.click()
    expect(a.locator("#recording")).to_be_visible()
    expect(a.locator("#compose-text")).to_be_hidden()
    expect(a.locator("#record-send")).to_be_focused()
    expect(a.locator("#record-time")).to_have_text("0:01", timeout=5_000)
    wait_until(lambda: int(a.locator("#record-wave").get_attribute("data-bars") or 0) >= 5, "the waveform")
    a.click("#record-cancel")
    expect(a.locator("#recording")).to_be_hidden()
    expect(a.locator("#compose-text")).to_be_visible()

    # click to start, Send to stop: uploaded and sent as audio
    record.click()
    expect(a.locator("#record-time")).to_have_text("0:02", timeout=6_000)
    shot(a, "17-recording")
    a.click("#record-send")
    expect(a.locator("#recording")).to_be_hidden()
    player = b.locator("#message-list .msg.theirs .media-audio .player")
    expect(player).to_have_count(1)
    expect(b.locator("#chat-list .chat-item .preview")).to_have_text("Voice message")
    expect(a.locator("#uploads .upload")).to_have_count(0)
    chat_id = a.evaluate("() => location.hash.split('=')[1]")
    history = httpx.get(f"{node.url}/api/chats/{chat_id}/messages", headers=auth(node, bob)).json()["messages"]
    media = history[-1]["media"]
    assert history[-1]["kind"] == "audio"
    assert media["mime"] == "audio/webm"  # Opus in WebM, told apart from video by its tracks
    assert 1.5 < media["duration"] < 5, media

    # played inline: the duration from the node (the recording's header has none), speed, seeking
    expect(player.locator(".player-time")).to_have_text(re.compile(r"^0:0[2-4]$"))
    audio = player.locator("audio")
    wait_until(lambda: audio.evaluate("a => a.readyState") >= 1, "the recording's metadata")
    player.locator(".play").click()
    expect(player.locator(".play")).to_have_attribute("aria-label", "Pause voice message")
    wait_until(lambda: audio.evaluate("a => a.currentTime") > 0.3, "playback")
    speed = player.locator(".speed")
    speed.click()
    expect(speed).to_have_text("1.5×")
    assert audio.evaluate("a => a.playbackRate") == 1.5
    speed.click()
    expect(speed).to_have_text("2×")
    assert audio.evaluate("a => a.playbackRate") == 2
    speed.click()
    expect(speed).to_have_text("1×")
    player.locator(".play").click()
    expect(player.locator(".play")).to_have_attribute("aria-label", "Play voice message")
    seek = player.locator(".seek")
    assert float(seek.get_attribute("max")) == pytest.approx(media["duration"], abs=0.3)
    seek.fill("1")  # a range input: moves the playhead
    wait_until(lambda: abs(audio.evaluate("a => a.currentTime") - 1) < 0.1, "the seek")
    expect(player.locator(".player-time")).to_have_text("0:01")
    shot(b, "18-voice-message")

    # hold to record, let go to send
    box = record.bounding_box()
    a.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    a.mouse.down()
    expect(a.locator("#recording")).to_be_visible()
    expect(a.locator("#record-hint")).to_be_visible()
    expect(a.locator("#record-time")).to_have_text("0:01", timeout=5_000)
    a.mouse.up()
    expect(b.locator("#message-list .msg.theirs .media-audio .player")).to_have_count(2)

    # hold, slide left, let go: cancelled
    a.mouse.down()
    expect(a.locator("#record-time")).to_have_text("0:01", timeout=5_000)
    a.mouse.move(box["x"] - 150, box["y"] + box["height"] / 2, steps=5)
    expect(a.locator("#recording")).to_have_class(re.compile("will-cancel"))
    a.mouse.up()
    expect(a.locator("#recording")).to_be_hidden()
    expect(a.locator("#uploads .upload")).to_have_count(0)
    expect(b.locator("#message-list .msg.theirs .media-audio .player")).to_have_count(2)


def test_voice_recording_without_a_microphone_says_why(pages, names):
    alice, bob = names("alice", "bob")
    a = pages.login(alice)
    a.context.add_init_script("""navigator.mediaDevices.getUserMedia = () =>
        Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));""")
    a.reload()
    open_direct(a, bob)
    a.click("#record")
    expect(a.locator("#compose-error")).to_have_text(
        "Microphone access is blocked. Allow it in the browser’s settings for this site to record voice messages.")
    expect(a.locator("#recording")).to_be_hidden()
    expect(a.locator("#compose-text")).to_be_visible()
    a.fill("#compose-text", "typing makes it go away")
    expect(a.locator("#compose-error")).to_be_hidden()


def test_edit_of_a_formatted_message_keeps_its_markers(pages, names):
    alice, bob = names("alice", "bob")
    a = pages.login(alice)
    open_direct(a, bob)
    send(a, "see you *tomorrow*")
    expect(a.locator("#message-list .msg.own .text strong")).to_have_text("tomorrow")
    row = a.locator("#message-list .msg[data-seq]").filter(has_text="see you tomorrow")
    row.locator(".bubble").hover()
    row.locator("[aria-label='More actions']").click()
    a.locator("#popup-menu").get_by_role("menuitem", name="Edit").click()
    expect(a.locator("#compose-text")).to_have_value("see you *tomorrow*")
    a.fill("#compose-text", "see you _today_")
    a.press("#compose-text", "Enter")
    expect(a.locator("#message-list .msg.own .text em")).to_have_text("today")
