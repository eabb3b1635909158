"""Message actions in the web client, in Chromium: the message's menu (right-click, long
press, keyboard, the "More actions" button) with reply, react, copy, forward to several
chats, star and the starred list, delete for me and for everyone, and message info in a 1-1
chat. The node, the browser and the helpers are those of test_browser.py."""

from __future__ import annotations

import httpx
import pytest
from test_browser import (  # noqa: F401 (fixtures)
    PHONE,
    auth,
    browser,
    expect,
    message_action,
    names,
    node,
    open_chat,
    open_direct,
    pages,
    send,
    shot,
    steady_point,
)

pytestmark = pytest.mark.browser


def bubble_row(page, text: str):
    return page.locator(f"#message-list .msg[data-seq]:has(.text:text-is('{text}'))")


def menu(page):
    found = page.locator("#popup-menu")
    expect(found).to_be_visible()
    return found


def test_the_message_menu_by_mouse_keyboard_and_long_press(pages, names):
    alice, bob = names("alice", "bob")
    a = pages.login(alice)
    a.context.grant_permissions(["clipboard-read", "clipboard-write"])
    open_direct(a, bob)
    send(a, "Meet at the station")
    row = bubble_row(a, "Meet at the station")
    row.locator(".bubble").click(button="right")
    items = menu(a).get_by_role("menuitem")
    expect(items).to_have_text(["Reply", "Copy", "Forward", "Star", "Edit", "Message info", "Delete for me",
                                "Delete for everyone"])
    expect(menu(a).locator(".reaction-bar button").first).to_be_focused()  # the reactions come first
    shot(a, "47-message-menu")
    menu(a).get_by_role("menuitem", name="Copy").click()
    expect(a.locator("#toast")).to_have_text("Message copied.")
    assert a.evaluate("() => navigator.clipboard.readText()") == "Meet at the station"

    # by keyboard: focus the message, Enter opens its menu, Escape gives the focus back
    a.locator("#messages").focus()
    a.keyboard.press("ArrowUp")
    expect(row.locator(".bubble")).to_be_focused()
    a.keyboard.press("Enter")
    expect(menu(a).get_by_role("menuitem", name="Reply")).to_be_visible()
    a.keyboard.press("ArrowDown")  # from the reactions to the first item
    expect(menu(a).get_by_role("menuitem", name="Reply")).to_be_focused()
    a.keyboard.press("Enter")
    expect(a.locator("#compose-context-title")).to_have_text("Reply to You")
    a.keyboard.press("Escape")

    phone = pages.login(bob, viewport=PHONE, has_touch=True, is_mobile=True)
    phone.click("#chat-list .chat-item")
    target = bubble_row(phone, "Meet at the station").locator(".bubble")
    expect(target).to_be_visible()
    point = steady_point(target, 20)
    cdp = phone.context.new_cdp_session(phone)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [point]})
    expect(menu(phone).get_by_role("menuitem", name="Star")).to_be_visible()
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    expect(menu(phone).get_by_role("menuitem")).to_have_text(["Reply", "Copy", "Forward", "Star", "Delete for me"])
    shot(phone, "48-message-menu-phone")
    menu(phone).get_by_role("menuitem", name="Star").click()
    expect(bubble_row(phone, "Meet at the station").get_by_role("img", name="Starred")).to_be_visible()


def test_forward_to_several_chats_marked_forwarded(pages, names, node, tmp_path):
    alice, bob, carol, dave = names("alice", "bob", "carol", "dave")
    group = {"title": "Hikers", "usernames": [carol, dave]}
    assert httpx.post(f"{node.url}/api/groups", json=group, headers=auth(node, bob)).status_code == 201
    a, b = pages.login(alice), pages.login(bob)
    open_direct(b, carol)
    open_direct(a, bob)
    send(a, "The trail is open again")
    open_chat(b, "Alice")
    message_action(b, "The trail is open again", "Forward")
    dialog = b.locator("#forward-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#forward-preview")).to_have_text("The trail is open again")
    dialog.get_by_label("Hikers").check()
    dialog.locator("#forward-search").fill("car")
    dialog.get_by_label("Carol").check()
    expect(dialog.locator("#forward-send")).to_have_text("Forward to 2 chats")
    shot(b, "49-forward")
    dialog.locator("#forward-send").click()
    expect(b.locator("#toast")).to_have_text("Forwarded to 2 chats.")
    c = pages.login(carol)
    for title in ("Hikers", "Bob"):
        open_chat(c, title)
        forwarded = bubble_row(c, "The trail is open again")
        expect(forwarded.locator(".forwarded")).to_have_text("Forwarded")
    messages = httpx.get(f"{node.url}/api/chats", headers=auth(node, carol)).json()["chats"]
    assert all(chat["last_message"]["forwarded"] for chat in messages)


def test_star_and_find_it_in_the_starred_list(pages, names, node):
    alice, bob = names("alice", "bob")
    a = pages.login(alice)
    open_direct(a, bob)
    send(a, "The wifi password is hunter2")
    for i in range(60):  # a long chat: the starred one scrolls out of what is loaded
        send(a, f"filler {i}")
    expect(a.locator("#message-list .msg.own[data-seq]")).to_have_count(61)
    message_action(a, "The wifi password is hunter2", "Star")
    expect(bubble_row(a, "The wifi password is hunter2").get_by_role("img", name="Starred")).to_be_visible()

    b = pages.login(alice)  # another device: a fresh page holds only the newest 50
    b.click("#chat-list .chat-item")
    expect(b.locator("#message-list .msg.own[data-seq]")).to_have_count(50)
    b.click("#open-starred")
    item = b.locator("#starred-list .starred-item")
    expect(item).to_have_count(1)
    expect(item.locator(".preview")).to_have_text("The wifi password is hunter2")
    shot(b, "50-starred")
    item.click()
    row = bubble_row(b, "The wifi password is hunter2")
    expect(row).to_be_in_viewport()  # older pages were loaded to show it in its place
    expect(row.locator(".bubble")).to_be_focused()
    b.click("#open-starred")
    message = b.locator("#starred-list .starred-item")
    expect(message).to_have_count(1)
    b.click("#starred-back")
    b.click("#chat-list .chat-item")
    message_action(b, "The wifi password is hunter2", "Unstar")
    expect(bubble_row(a, "The wifi password is hunter2").get_by_role("img", name="Starred")).to_have_count(0)  # live
    b.click("#open-starred")
    expect(b.locator("#starred-status")).to_contain_text("No starred messages")


def test_delete_for_me_and_for_everyone_and_message_info_in_a_1_1_chat(pages, names):
    alice, bob = names("alice", "bob")
    a, b = pages.login(alice), pages.login(bob)
    open_direct(a, bob)
    send(a, "first")
    send(a, "second")
    open_chat(b, "Alice")
    expect(b.locator("#message-list .msg .text")).to_have_text(["first", "second"])

    message_action(b, "first", "Delete for me")
    b.click("#confirm-ok")
    expect(b.locator("#message-list .msg .text")).to_have_text(["second"])
    expect(a.locator("#message-list .msg .text")).to_have_text(["first", "second"])  # alice keeps it
    b.reload()
    open_chat(b, "Alice")
    expect(b.locator("#message-list .msg .text")).to_have_text(["second"])

    bubble_row(b, "second").locator(".bubble").click(button="right")
    expect(menu(b).get_by_role("menuitem", name="Delete for everyone")).to_have_count(0)  # not bob's
    b.keyboard.press("Escape")
    message_action(a, "second", "Message info")
    expect(a.locator("#receipts-body .receipt-state")).to_have_text("Read by Bob")
    shot(a, "51-message-info-direct")
    a.keyboard.press("Escape")
    message_action(a, "second", "Delete for everyone")
    a.click("#confirm-ok")
    expect(b.locator("#message-list .text.deleted")).to_have_text(["This message was deleted"])
