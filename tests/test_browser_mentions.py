"""Mentions in the web client, in Chromium: "@" and a few letters list the group's members,
the keyboard or a click picks one, the message names them, the mention is highlighted (ours
stands out), and a mention notifies even in a muted group. The node, the browser and the
helpers are those of test_browser.py."""

from __future__ import annotations

import httpx
import pytest
from test_browser import (  # noqa: F401 (fixtures)
    HIDDEN_TAB_WITH_NOTIFICATION_SPY,
    auth,
    browser,
    expect,
    names,
    node,
    open_chat,
    pages,
    shot,
    wait_until,
)

pytestmark = pytest.mark.browser


def test_mention_with_autocomplete_highlight_and_a_notification_through_a_mute(pages, names, node):
    alice, bob, carol = names("alice", "bob", "carol")
    group = {"title": "Climbing", "usernames": [bob, carol]}
    chat = httpx.post(f"{node.url}/api/groups", json=group, headers=auth(node, alice)).json()["chat"]
    assert httpx.patch(f"{node.url}/api/chats/{chat['id']}/prefs", json={"mute": True},
                       headers=auth(node, bob)).status_code == 200
    b = pages.login(bob, notifications_banner=True)
    b.add_init_script(HIDDEN_TAB_WITH_NOTIFICATION_SPY)
    b.reload()
    b.click("#notify-on")
    a = pages.login(alice)
    open_chat(a, "Climbing")
    expect(a.locator("#chat-subtitle")).to_contain_text("Bob")  # the members are known

    composer = a.locator("#compose-text")
    composer.press_sequentially("Who has the rope, @b", delay=20)
    options = a.locator("#mention-list [role='option']")
    expect(options).to_have_count(1)
    expect(options.first).to_contain_text("Bob")
    expect(composer).to_have_attribute("aria-expanded", "true")
    shot(a, "52-mention-autocomplete")
    a.keyboard.press("Enter")  # picks, does not send
    expect(composer).to_have_value("Who has the rope, @Bob ")
    composer.press_sequentially("or @", delay=20)
    expect(options).to_have_count(2)  # everyone but us
    a.keyboard.press("ArrowDown")
    expect(options.nth(1)).to_have_attribute("aria-selected", "true")
    a.keyboard.press("Tab")
    expect(composer).to_have_value("Who has the rope, @Bob or @Carol ")
    composer.press_sequentially("?", delay=20)
    a.keyboard.press("Enter")

    row = a.locator("#message-list .msg.own[data-seq]")
    expect(row.locator(".mention")).to_have_text(["@Bob", "@Carol"])
    stored = httpx.get(f"{node.url}/api/chats/{chat['id']}/messages", headers=auth(node, alice)).json()["messages"]
    bob_id = httpx.get(f"{node.url}/api/me", headers=auth(node, bob)).json()["user"]["id"]
    carol_id = httpx.get(f"{node.url}/api/me", headers=auth(node, carol)).json()["user"]["id"]
    assert stored[-1]["mentions"] == [bob_id, carol_id]

    # bob muted the group, but the mention gets through; his own mention stands out
    wait_until(lambda: b.evaluate("() => window.shown.length") > 0, "a notification")
    assert b.evaluate("() => window.shown[0].body") == "Who has the rope, @Bob or @Carol ?"
    b.click("#chat-list .chat-item")
    expect(b.locator("#message-list .mention.me")).to_have_text("@Bob")
    expect(b.locator("#message-list .mention:not(.me)")).to_have_text("@Carol")
    shot(b, "53-mention-highlighted")

    # a message that names no one does not notify a muted group
    a.locator("#compose-text").fill("anyway, see you at six")
    a.keyboard.press("Enter")
    expect(b.locator("#message-list .msg .text").last).to_have_text("anyway, see you at six")
    assert b.evaluate("() => window.shown.length") == 1
