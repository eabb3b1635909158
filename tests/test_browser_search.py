"""Searching messages in the web client, in Chromium: the sidebar's search lists messages
matching every word (the words marked), the newest first, more on demand, and a click opens
the chat at the message in its context, loading older pages. The node, the browser and the
helpers are those of test_browser.py."""

from __future__ import annotations

import httpx
import pytest
from test_browser import (  # noqa: F401 (fixtures)
    auth,
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


def test_search_messages_and_jump_to_one_in_its_context(pages, names, node):
    alice, bob, carol = names("alice", "bob", "carol")
    a = pages.login(alice)
    open_direct(a, bob)
    send(a, "The key is under the blue flowerpot")
    for i in range(70):  # a long chat: the match is far above what a fresh page loads
        send(a, f"chatter {i}")
    expect(a.locator("#message-list .msg.own[data-seq]")).to_have_count(71)
    open_direct(a, carol)
    send(a, "Carol, the blue car is parked outside")
    send(a, "nothing to see here")

    # LMDB indexes just after each commit: wait until the node finds both
    headers = auth(node, alice)
    wait_until(lambda: len(httpx.get(f"{node.url}/api/search", params={"q": "blue"},
                                     headers=headers).json()["results"]) == 2, "both messages indexed", timeout=30)
    b = pages.login(alice)  # another device, fresh
    results = b.locator("#message-results-list .result-item")
    b.fill("#search", "blue")
    expect(results).to_have_count(2)
    expect(results.locator(".preview")).to_have_text(["Carol, the blue car is parked outside",
                                                      "The key is under the blue flowerpot"])
    expect(results.first.locator("mark")).to_have_text("blue")
    b.fill("#search", "blue flower")  # every word, the last as the start of one
    expect(results).to_have_count(1)
    expect(results.locator(".chat-name")).to_have_text("Bob")
    shot(b, "54-search")
    results.first.click()
    row = b.locator("#message-list .msg[data-seq]:has(.text:text-is('The key is under the blue flowerpot'))")
    expect(row).to_be_in_viewport()
    expect(row.locator(".bubble")).to_be_focused()
    expect(b.locator("#chat-title")).to_have_text("Bob")
    shot(b, "55-search-result-in-context")

    # deleted for everyone: no longer found
    message_id = row.get_attribute("data-id")
    chat_id = b.evaluate("() => location.hash.split('=')[1]")
    assert httpx.get(f"{node.url}/api/search", params={"q": "flowerpot"}, headers=headers).json()["results"]
    b.fill("#search", "")
    b.locator(f"#message-list .msg[data-id='{message_id}'] .bubble").hover()
    b.locator(f"#message-list .msg[data-id='{message_id}'] [aria-label='More actions']").click()
    b.locator("#popup-menu").get_by_role("menuitem", name="Delete for everyone").click()
    b.click("#confirm-ok")
    wait_until(lambda: not httpx.get(f"{node.url}/api/search", params={"q": "flowerpot", "chat": chat_id},
                                     headers=headers).json()["results"], "the deletion to reach the index")
    b.fill("#search", "flowerpot")
    expect(b.locator("#search-empty")).to_have_text("No chats, people or messages match “flowerpot”.")


def test_search_in_one_chat_from_its_menu(pages, names, node):
    alice, bob, carol = names("alice", "bob", "carol")
    a = pages.login(alice)
    open_direct(a, bob)
    send(a, "pizza on friday?")
    open_direct(a, carol)
    send(a, "pizza is great")
    headers = auth(node, alice)
    wait_until(lambda: len(httpx.get(f"{node.url}/api/search", params={"q": "pizza"},
                                     headers=headers).json()["results"]) == 2, "both messages indexed", timeout=30)
    a.click("#chat-menu")  # carol's chat is open
    a.locator("#popup-menu").get_by_role("menuitem", name="Search messages").click()
    expect(a.locator("#search")).to_be_focused()
    expect(a.locator("#search-scope-text")).to_have_text("Messages in “Carol”")
    a.keyboard.type("pizza")
    results = a.locator("#message-results-list .result-item")
    expect(results).to_have_count(1)
    expect(results.locator(".preview")).to_have_text("pizza is great")
    expect(a.locator("#people")).to_be_hidden()
    a.fill("#search", "friday")
    expect(a.locator("#search-empty")).to_have_text("No messages in this chat match “friday”.")
    a.click("#search-scope-clear")  # every chat again
    expect(a.locator("#search-scope")).to_be_hidden()
    expect(results).to_have_count(1)
    expect(results.locator(".preview")).to_have_text("pizza on friday?")

