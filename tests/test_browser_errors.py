"""Errors in the web client, in Chromium: each says in words what went wrong and offers only
what can help (no Retry for a refusal that will be refused again). The node is one of
test_browser.py's with small limits: photos up to 300 kB, groups of 3."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
from test_browser import (  # noqa: F401 (fixtures)
    NodeProcess,
    auth,
    browser,
    drop_file,
    expect,
    names,
    open_chat,
    open_direct,
    pages,
    send,
    shot,
)

pytestmark = pytest.mark.browser

MAX_IMAGE_BYTES = 300_000


@pytest.fixture(scope="module")
def node(tmp_path_factory, module_engine) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("browser-errors-node"), limits="max_group_members = 3",
                       media=f"max_image_bytes = {MAX_IMAGE_BYTES}")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def user_id(node, username: str) -> str:
    return httpx.get(f"{node.url}/api/me", headers=auth(node, username)).json()["user"]["id"]


def test_refused_uploads_say_why_in_words_and_offer_no_retry(pages, names, node):
    if httpx.post(f"{node.url}/api/media").status_code == 404:
        pytest.skip("this node has no media plugin")
    alice, bob = names("alice", "bob")
    a, b = pages.login(alice), pages.login(bob)
    open_direct(a, bob)
    send(a, "Some files")
    open_chat(b, "Alice")
    failed = a.locator("#uploads .upload.failed")

    def drop_and_send(name: str, mime: str, data: bytes) -> None:
        drop_file(a, "#conversation", name, mime, data)
        a.click("#attach-send")

    drop_and_send("setup.exe", "application/x-msdownload", b"\x7fELF\x02\x01\x01" + os.urandom(20_000))
    expect(failed.locator(".upload-error")).to_have_text(
        "“setup.exe” can’t be sent: this server doesn’t accept programs.")
    expect(failed.get_by_role("button")).to_have_text(["Dismiss"])  # trying again would be refused again
    failed.get_by_role("button", name="Dismiss").click()
    expect(failed).to_have_count(0)

    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(3000)
    drop_and_send("IMG_0042.HEIC", "image/heic", heic)  # named by its detected type, in words
    expect(failed.locator(".upload-error")).to_have_text(
        "“IMG_0042.HEIC” can’t be sent: this server doesn’t accept HEIC photos.")
    expect(failed.get_by_role("button")).to_have_text(["Dismiss"])
    failed.get_by_role("button", name="Dismiss").click()

    big = b"\x89PNG\r\n\x1a\n" + os.urandom(400_000)
    drop_and_send("big.png", "image/png", big)
    expect(failed.locator(".upload-error")).to_have_text(
        "“big.png” is too large to send (0.4 MB): photos can be up to 0.3 MB here.")
    expect(failed.get_by_role("button")).to_have_text(["Dismiss"])
    shot(a, "22-upload-refused")
    failed.get_by_role("button", name="Dismiss").click()

    drop_file(a, "#conversation", "empty.txt", "text/plain", b"")  # refused before it is sent
    expect(a.locator("#compose-error")).to_have_text("“empty.txt” is empty, so there is nothing to send.")
    expect(a.locator("#attach-dialog")).to_be_hidden()

    # the network goes away mid-send: that one can work later, so it may be retried
    a.context.set_offline(True)
    drop_and_send("dot.png", "image/png", small_png())
    expect(failed.locator(".upload-error")).to_have_text(
        "The upload of “dot.png” was interrupted. Check your connection.")
    expect(failed.get_by_role("button")).to_have_text(["Retry", "Dismiss"])
    a.context.set_offline(False)
    failed.get_by_role("button", name="Retry").click()
    expect(b.locator("#message-list .media-image img")).to_have_count(1)
    expect(a.locator("#uploads .upload")).to_have_count(0)
    expect(b.locator("#message-list .media-image img")).to_have_count(1)  # the refused ones never arrived
    [chat] = httpx.get(f"{node.url}/api/chats", headers=auth(node, bob)).json()["chats"]
    assert chat["last_message"]["kind"] == "image"


def test_a_message_to_someone_blocked_says_who_and_offers_unblock_only_when_it_helps(pages, names, node):
    alice, bob, carol = names("alice", "bob", "carol")
    a = pages.login(alice)
    open_direct(a, bob)
    open_direct(a, carol)
    assert httpx.put(f"{node.url}/api/blocks/{user_id(node, alice)}", headers=auth(node, bob)).status_code == 204
    assert httpx.put(f"{node.url}/api/blocks/{user_id(node, carol)}", headers=auth(node, alice)).status_code == 204

    open_chat(a, "Bob")  # bob blocked alice: nothing she can do
    send(a, "Are you there?")
    row = a.locator("#message-list .msg.is-pending")
    expect(row.locator(".failed-reason")).to_have_text("Not sent: Bob can’t receive your messages.")
    expect(row.get_by_role("button")).to_have_text(["Discard"])
    shot(a, "23-blocked")
    row.get_by_role("button", name="Discard").click()
    expect(a.locator("#message-list .msg")).to_have_count(0)

    open_chat(a, "Carol")  # alice blocked carol (on another device): unblocking helps
    send(a, "Sorry, that was a mistake")
    row = a.locator("#message-list .msg.is-pending")
    expect(row.locator(".failed-reason")).to_have_text("Not sent: you blocked Carol.")
    expect(row.get_by_role("button")).to_have_text(["Unblock Carol", "Discard"])
    row.get_by_role("button", name="Unblock Carol").click()
    expect(a.locator("#message-list .msg.own[data-seq] .text")).to_have_text(["Sorry, that was a mistake"])
    expect(a.locator("#message-list .msg.is-pending")).to_have_count(0)
    assert httpx.get(f"{node.url}/api/blocks", headers=auth(node, alice)).json()["users"] == []


def test_a_full_group_and_a_logout_from_elsewhere_are_said_plainly(pages, names, node):
    alice, bob, carol, dave = names("alice", "bob", "carol", "dave")
    group = {"title": "Trio", "usernames": [bob, carol]}
    created = httpx.post(f"{node.url}/api/groups", json=group, headers=auth(node, alice))
    assert created.status_code == 201
    a = pages.login(alice)
    open_chat(a, "Trio")
    a.click("#chat-info")
    a.fill("#info-add", dave)
    pick = a.locator(f"#info-body .pick:has-text('@{dave}')")
    expect(pick).to_be_visible()
    # a change to the chat re-renders the info body; the search typed into it survives
    chat_id = created.json()["chat"]["id"]
    renamed = httpx.patch(f"{node.url}/api/chats/{chat_id}", json={"title": "Trio!"}, headers=auth(node, alice))
    assert renamed.status_code == 200
    expect(a.locator("#info-body .info-name")).to_have_text("Trio!")
    expect(a.locator("#info-add")).to_have_value(dave)
    pick.click()
    expect(a.locator("#info-error")).to_have_text("This group is full: a group can have at most 3 members.")
    a.keyboard.press("Escape")

    device = a.evaluate("() => JSON.parse(localStorage.getItem('chatnode.session')).device_id")
    assert httpx.delete(f"{node.url}/api/me/devices/{device}", headers=auth(node, alice)).status_code == 204
    expect(a.locator("#login-view")).to_be_visible()
    expect(a.locator("#auth-error")).to_have_text(
        "You were logged out: from another device, by a password change, by the server’s admin,"
        " or because this login reached its maximum age. Log in again.")


def small_png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (40, 30), (20, 160, 90)).save(out, "PNG")
    return out.getvalue()
