"""Chat management in the web client, in Chromium: the chat menu (right-click, a long press
on a phone, the keyboard, the header's button), mute, archive, pin, mark as unread, clear,
delete, and block and report from the contact's page. The node, the browser and the
helpers are those of test_browser.py."""

from __future__ import annotations

import time

import httpx
import pytest
from test_browser import (  # noqa: F401 (fixtures)
    HIDDEN_TAB_WITH_NOTIFICATION_SPY,
    PHONE,
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
    steady_point,
    wait_until,
)

pytestmark = pytest.mark.browser


def row(page, title: str):
    return page.locator(f"#chat-list .chat-row:has(.chat-name:text-is('{title}'))")


def chat_menu(page, title: str):
    """Open a chat's menu from the list with a right-click."""
    row(page, title).locator(".chat-item").click(button="right")
    menu = page.locator("#popup-menu")
    expect(menu).to_be_visible()
    return menu


def pick(page, title: str, item: str) -> None:
    chat_menu(page, title).get_by_role("menuitem", name=item).click()
    expect(page.locator("#popup-menu")).to_have_count(0)


def names_in_list(page) -> list[str]:
    return page.locator("#chat-list .chat-row .chat-name").all_inner_texts()


def as_member(node, user: str, chat_title: str, act) -> None:
    """`await act(client, chat_id)` with the Python client logged in as `user`, in `user`'s
    chat called `chat_title`."""
    import trio

    from node.client import ChatClient

    async def go():
        async with ChatClient(node.url) as client:
            await client.login(user, "correct horse battery")
            chat = next(c for c in await client.chats(hidden=True) if c["title"] == chat_title)
            await act(client, chat["id"])

    trio.run(go)


def message_from(node, sender: str, to_chat_title: str, text: str) -> None:
    """`sender` sends `text` over the REST-free path: the chat socket of the Python client."""

    async def act(client, chat_id):
        async with client.connect() as conn:
            await conn.send_text(chat_id, text)

    as_member(node, sender, to_chat_title, act)


def test_mute_pin_archive_and_mark_unread_from_the_chat_menu(pages, names, node):
    alice, bob, carol, dave, erin = names("alice", "bob", "carol", "dave", "erin")
    a = pages.login(alice)
    for other in (bob, carol, dave, erin):
        open_direct(a, other)
    send(a, "hello Erin")

    # mute for 8 hours: an icon in the list, and the unread count turns grey
    pick(a, "Bob", "Mute notifications")
    dialog = a.locator("#mute-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_label("8 hours")).to_be_checked()
    dialog.get_by_role("button", name="Mute").click()
    expect(row(a, "Bob").get_by_role("img", name="Muted")).to_be_visible()
    summary = httpx.get(f"{node.url}/api/chats", headers=auth(node, alice)).json()["chats"]
    bob_chat = next(c for c in summary if c["title"] == "Bob")
    assert bob_chat["muted"] and bob_chat["muted_until"] > time.time() * 1000 + 7.9 * 3600 * 1000

    # pin three; a fourth is refused in words; pinned come first, the latest pin on top
    for title in ("Bob", "Carol", "Dave"):
        pick(a, title, "Pin chat")
        expect(row(a, title).get_by_role("img", name="Pinned")).to_be_visible()
    expect(a.locator("#chat-list .chat-row .chat-name")).to_have_text(["Dave", "Carol", "Bob", "Erin"])
    pick(a, "Erin", "Pin chat")
    expect(a.locator("#toast")).to_have_text("You can only pin up to 3 chats.")
    pick(a, "Carol", "Unpin chat")
    expect(a.locator("#chat-list .chat-row .chat-name")).to_have_text(["Dave", "Bob", "Erin", "Carol"])

    # mark as unread: a dot; opening the chat clears it (on the node too)
    pick(a, "Erin", "Mark as unread")
    expect(row(a, "Erin").get_by_role("img", name="Marked as unread")).to_be_visible()
    shot(a, "40-chat-menu-states")
    open_chat(a, "Erin")
    expect(row(a, "Erin").get_by_role("img", name="Marked as unread")).to_have_count(0)
    wait_until(lambda: not next(c for c in httpx.get(f"{node.url}/api/chats", headers=auth(node, alice)).json()["chats"]
                                if c["title"] == "Erin")["marked_unread"], "the mark to go on the node")

    # archive: the chat goes to "Archived"; a new message brings it back unless it is muted
    pick(a, "Erin", "Archive chat")
    pick(a, "Bob", "Archive chat")  # muted: stays archived
    expect(a.locator("#chat-list .chat-row .chat-name")).to_have_text(["Dave", "Carol"])
    archive = a.locator("#chat-list [data-row='archive']")
    expect(archive).to_contain_text("Archived")
    message_from(node, bob, "Alice", "muted news")
    message_from(node, erin, "Alice", "back again")
    expect(a.locator("#chat-list .chat-row .chat-name")).to_have_text(["Dave", "Erin", "Carol"])
    expect(archive).to_contain_text("1")  # bob's unread archived chat
    archive.click()
    expect(a.locator("#chat-list .chat-row .chat-name")).to_have_text(["Bob"])
    expect(row(a, "Bob").locator(".unread.muted-count")).to_have_text("1")
    shot(a, "41-archived")
    pick(a, "Bob", "Unarchive chat")
    # archiving unpinned it: dave is the one pinned chat, then the newest first
    expect(a.locator("#chat-list .chat-row .chat-name")).to_have_text(["Dave", "Erin", "Bob", "Carol"])


def test_a_muted_chat_does_not_notify_but_counts(pages, names):
    alice, bob, carol = names("alice", "bob", "carol")
    a = pages.login(alice, notifications_banner=True)
    b, c = pages.login(bob), pages.login(carol)
    open_direct(b, alice)
    open_direct(c, alice)
    send(b, "first")
    expect(row(a, "Bob")).to_be_visible()
    pick(a, "Bob", "Mute notifications")
    a.locator("#mute-dialog").get_by_label("Always").check()
    a.locator("#mute-dialog").get_by_role("button", name="Mute").click()
    expect(row(a, "Bob").get_by_role("img", name="Muted")).to_be_visible()
    a.add_init_script(HIDDEN_TAB_WITH_NOTIFICATION_SPY)
    a.reload()
    a.click("#notify-on")
    expect(row(a, "Bob").get_by_role("img", name="Muted")).to_be_visible()  # kept by the node
    send(b, "muted message")
    expect(row(a, "Bob").locator(".unread")).to_have_text("2")  # the badge still counts
    send(c, "not muted")
    wait_until(lambda: a.evaluate("() => window.shown.length") > 0, "a notification")
    assert [n["body"] for n in a.evaluate("() => window.shown")] == ["not muted"]


def test_the_chat_menu_by_keyboard_and_by_a_long_press_on_a_phone(pages, names):
    alice, bob = names("alice", "bob")
    a = pages.login(alice)
    open_direct(a, bob)
    item = row(a, "Bob").locator(".chat-item")
    item.focus()
    a.keyboard.press("Shift+F10")
    menu = a.locator("#popup-menu")
    expect(menu).to_be_visible()
    expect(menu.get_by_role("menuitem").first).to_be_focused()
    a.keyboard.press("ArrowDown")
    expect(menu.get_by_role("menuitem", name="Mute notifications")).to_be_focused()
    a.keyboard.press("End")
    expect(menu.get_by_role("menuitem", name="Delete chat")).to_be_focused()
    a.keyboard.press("p")  # the next item starting with P
    expect(menu.get_by_role("menuitem", name="Pin chat")).to_be_focused()
    a.keyboard.press("Escape")
    expect(menu).to_have_count(0)
    expect(item).to_be_focused()
    a.keyboard.press("ContextMenu")
    expect(menu).to_be_visible()
    a.keyboard.press("Enter")  # the first item: archive
    expect(a.locator("#chat-list [data-row='archive']")).to_be_visible()

    phone = pages.login(bob, viewport=PHONE, has_touch=True, is_mobile=True)
    target = row(phone, "Alice").locator(".chat-item")
    expect(target).to_be_visible()
    point = steady_point(target, 60)
    cdp = phone.context.new_cdp_session(phone)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [point]})
    expect(phone.locator("#popup-menu")).to_be_visible()  # after half a second of holding
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    expect(phone.locator("#chat-view")).to_be_hidden()  # the press did not also open the chat
    shot(phone, "42-chat-menu-phone")
    phone.keyboard.press("Escape")
    expect(phone.locator("#popup-menu")).to_have_count(0)


def test_a_menu_gives_the_focus_back_to_a_row_redrawn_while_it_was_open(pages, names, node):
    """News redraws the chat list and the messages it changes: a menu opened from the
    keyboard on a chat or a message gives the focus back to that chat's or message's new
    row, not to the page."""
    alice, bob = names("alice", "bob")
    a = pages.login(alice)
    open_direct(a, bob)
    send(a, "are you there?")
    menu = a.locator("#popup-menu")

    item = row(a, "Bob").locator(".chat-item")
    item.focus()
    a.keyboard.press("Shift+F10")
    expect(menu.get_by_role("menuitem").first).to_be_focused()
    message_from(node, bob, "Alice", "yes, here")
    expect(row(a, "Bob").locator(".preview")).to_have_text("yes, here")  # the list was redrawn
    expect(menu.get_by_role("menuitem").first).to_be_focused()
    a.keyboard.press("Escape")
    expect(menu).to_have_count(0)
    expect(item).to_be_focused()

    mine = a.locator("#message-list .msg[data-seq]", has_text="are you there?")
    mine.locator(".bubble").focus()
    a.keyboard.press("ContextMenu")
    expect(menu).to_be_visible()
    seq = int(mine.get_attribute("data-seq"))
    as_member(node, bob, "Alice", lambda client, chat_id: client.react(chat_id, seq, "👍"))
    expect(mine.locator(".reactions .reaction")).to_have_count(1)  # the message was redrawn
    a.keyboard.press("Escape")
    expect(menu).to_have_count(0)
    expect(mine.locator(".bubble")).to_be_focused()


def test_clear_and_delete_a_chat_for_me(pages, names, node):
    alice, bob = names("alice", "bob")
    a, b = pages.login(alice), pages.login(bob)
    open_direct(a, bob)
    for text in ("one", "two"):
        send(a, text)
    open_chat(b, "Alice")
    expect(b.locator("#message-list .msg .text")).to_have_text(["one", "two"])
    b.click("#chat-menu")  # the header's menu
    b.locator("#popup-menu").get_by_role("menuitem", name="Clear chat").click()
    b.click("#confirm-ok")
    expect(b.locator("#message-list .msg")).to_have_count(0)
    expect(a.locator("#message-list .msg .text")).to_have_text(["one", "two"])  # alice keeps hers
    send(a, "three")
    expect(b.locator("#message-list .msg .text")).to_have_text(["three"])
    b.reload()
    open_chat(b, "Alice")
    expect(b.locator("#message-list .msg .text")).to_have_text(["three"])

    pick(b, "Alice", "Delete chat")
    b.click("#confirm-ok")
    expect(row(b, "Alice")).to_have_count(0)
    expect(b.locator("#chat-view")).to_be_hidden()
    send(a, "four")
    expect(row(b, "Alice")).to_be_visible()  # a new message brings it back
    open_chat(b, "Alice")
    expect(b.locator("#message-list .msg .text")).to_have_text(["four"])


def test_block_and_report_from_the_contacts_page(pages, names, node):
    alice, bob = names("alice", "bob")
    a, b = pages.login(alice), pages.login(bob)
    open_direct(b, alice)
    for text in ("buy cheap watches", "click this link", "last chance"):
        send(b, text)
    open_chat(a, "Bob")
    expect(a.locator("#message-list .msg .text")).to_have_count(3)
    a.click("#chat-title-button")
    info = a.locator("#info-dialog")
    expect(info.get_by_role("switch", name="Mute notifications")).not_to_be_checked()
    info.get_by_role("button", name="Report Bob").click()
    report = a.locator("#report-dialog")
    expect(report.locator("#report-title")).to_have_text("Report Bob?")
    expect(report.get_by_label("Block Bob")).to_be_checked()
    report.get_by_label("What happened?").fill("spam")
    shot(a, "43-report")
    report.get_by_role("button", name="Report").click()
    expect(a.locator("#toast")).to_have_text("Bob is reported and blocked.")
    expect(info.get_by_role("button", name="Unblock Bob")).to_be_visible()
    reports = httpx.get(f"{node.url}/api/admin/reports").json()["reports"]
    mine = [r for r in reports if r["reason"] == "spam" and r["user"] and reports]
    assert [m["text"] for m in mine[0]["messages"]] == ["buy cheap watches", "click this link", "last chance"]
    assert httpx.get(f"{node.url}/api/blocks", headers=auth(node, alice)).json()["users"][0]["username"] == bob

    info.get_by_role("button", name="Unblock Bob").click()
    expect(a.locator("#toast")).to_have_text("Bob is unblocked.")
    # Unblocked, Bob's presence shows again: the dialog is drawn anew when it arrives, and a
    # click on a button being replaced would be lost.
    expect(info).to_contain_text("· online")
    info.get_by_role("button", name="Block Bob").click()
    a.click("#confirm-ok")
    expect(info.get_by_role("button", name="Unblock Bob")).to_be_visible()
    assert httpx.get(f"{node.url}/api/blocks", headers=auth(node, alice)).json()["users"][0]["username"] == bob
    info.get_by_role("switch", name="Mute notifications").click()
    a.locator("#mute-dialog").get_by_role("button", name="Mute").click()
    expect(info.get_by_role("switch", name="Mute notifications")).to_be_checked()
    shot(a, "44-contact-info")
