"""Reactions in the web client, in Chromium: the quick bar and the full picker, chips with
counts under the bubble, who reacted (and taking ours back), live on both sides, after a
reconnect, and a notification for the author. The node, the browser and the helpers are
those of test_browser.py."""

from __future__ import annotations

import pytest
from test_browser import (  # noqa: F401 (fixtures)
    HIDDEN_TAB_WITH_NOTIFICATION_SPY,
    browser,
    expect,
    names,
    node,
    open_chat,
    open_direct,
    pages,
    send,
    shot,
    wait_until,
)

pytestmark = pytest.mark.browser


def bubble_row(page, text: str):
    return page.locator(f"#message-list .msg[data-seq]:has(.text:text-is('{text}'))")


def react(page, text: str, emoji: str, label: str = "React with") -> None:
    row = bubble_row(page, text)
    row.locator(".bubble").hover()
    row.get_by_role("button", name="React").click()
    page.locator("#popup-menu").get_by_role("button", name=f"{label} {emoji}").click()
    expect(page.locator("#popup-menu")).to_have_count(0)


def chips(page, text: str):
    return bubble_row(page, text).locator(".reactions .reaction")


def test_react_change_see_who_and_take_it_back(pages, names):
    alice, bob = names("alice", "bob")
    a, b = pages.login(alice), pages.login(bob)
    open_direct(a, bob)
    send(a, "Dinner at eight?")
    open_chat(b, "Alice")
    expect(bubble_row(b, "Dinner at eight?")).to_be_visible()

    react(b, "Dinner at eight?", "❤️")
    expect(chips(a, "Dinner at eight?")).to_have_text(["❤️"])  # live, on the author's side
    expect(chips(b, "Dinner at eight?")).to_have_text(["❤️"])
    expect(chips(b, "Dinner at eight?").first).to_have_class("reaction mine")
    react(b, "Dinner at eight?", "👍")  # one per person: it replaces the heart
    expect(chips(a, "Dinner at eight?")).to_have_text(["👍"])
    react(a, "Dinner at eight?", "👍")
    expect(chips(b, "Dinner at eight?")).to_have_text(["👍2"])
    expect(chips(b, "Dinner at eight?").first).to_have_attribute("aria-label", "👍 2: You and Alice")
    expect(a.locator("#chat-list .chat-item .unread")).to_have_count(0)  # reactions are not messages
    expect(a.locator("#message-list .msg")).to_have_count(1)
    shot(a, "45-reactions")

    chips(a, "Dinner at eight?").first.click()  # who reacted
    dialog = a.locator("#reactions-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator(".reaction-people .member-name")).to_contain_text(["Bob", "You"])
    shot(a, "46-who-reacted")
    dialog.get_by_role("button", name="Take back your 👍").click()
    expect(chips(b, "Dinner at eight?")).to_have_text(["👍"])
    expect(chips(a, "Dinner at eight?").first).to_have_class("reaction")

    react(b, "Dinner at eight?", "👍", "Take back your")  # picking ours again takes it back
    expect(chips(a, "Dinner at eight?")).to_have_count(0)


def test_more_reactions_from_the_picker_and_by_keyboard(pages, names):
    alice, bob = names("alice", "bob")
    a, b = pages.login(alice), pages.login(bob)
    open_direct(a, bob)
    send(a, "We launched!")
    open_chat(b, "Alice")
    row = bubble_row(b, "We launched!")
    row.locator(".bubble").hover()
    row.get_by_role("button", name="React").focus()
    b.keyboard.press("Enter")
    bar = b.locator("#popup-menu .reaction-bar")
    expect(bar.get_by_role("button", name="React with 👍")).to_be_focused()
    b.keyboard.press("ArrowLeft")  # round to "More reactions"
    expect(bar.get_by_role("button", name="More reactions")).to_be_focused()
    b.keyboard.press("Enter")
    picker = b.locator("#react-dialog")
    expect(picker).to_be_visible()
    picker.locator("#react-search").fill("rocket")
    picker.locator("#react-search").press("Enter")
    expect(picker).to_be_hidden()
    expect(chips(a, "We launched!")).to_have_text(["🚀"])
    row.locator(".bubble").hover()
    row.get_by_role("button", name="React").click()
    expect(b.locator("#popup-menu .reaction-bar .mine")).to_have_count(0)  # 🚀 is not a quick one
    b.keyboard.press("ArrowRight")
    b.keyboard.press("Enter")  # ❤️ replaces 🚀
    expect(chips(a, "We launched!")).to_have_text(["❤️"])


def test_reactions_missed_offline_arrive_after_the_reconnect_and_the_author_is_notified(pages, names):
    alice, bob = names("alice", "bob")
    a = pages.login(alice, notifications_banner=True)
    b = pages.login(bob)
    open_direct(a, bob)
    send(a, "Look at my new haircut")
    open_chat(b, "Alice")
    expect(bubble_row(b, "Look at my new haircut")).to_be_visible()

    a.context.set_offline(True)
    expect(a.locator("#conn-banner")).to_be_visible()
    react(b, "Look at my new haircut", "😂")
    a.context.set_offline(False)
    expect(chips(a, "Look at my new haircut")).to_have_text(["😂"])  # asked for again after the reconnect

    a.add_init_script(HIDDEN_TAB_WITH_NOTIFICATION_SPY)
    a.reload()
    a.click("#notify-on")
    expect(a.locator("#conn-banner")).to_be_hidden()
    react(b, "Look at my new haircut", "😮")
    wait_until(lambda: a.evaluate("() => window.shown.length") > 0, "a notification")
    assert a.evaluate("() => window.shown[0]")["body"] == "Reacted 😮 to your message: “Look at my new haircut”"
    assert a.evaluate("() => window.shown[0]")["title"] == "Bob"
