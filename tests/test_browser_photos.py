"""Profile and group photos in the web client, in Chromium: choosing a picture, cropping it
to a square, seeing it in the chat list, the header, member lists and the settings, on the
other side too, removing it (back to initials), a group photo set by an admin, and the
privacy setting that hides it. The node, the browser and the helpers are those of
test_browser.py."""

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
)

pytestmark = pytest.mark.browser


def portrait(tmp_path) -> str:
    """A 600x900 picture, red on top and blue below, to crop."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (600, 900), (200, 40, 40))
    ImageDraw.Draw(image).rectangle((0, 450, 600, 900), fill=(40, 60, 210))
    path = tmp_path / "portrait.png"
    image.save(path)
    return str(path)


def shown_photo(locator):
    """The avatar's <img>, once its photo has loaded."""
    return locator.locator("img.avatar-img")


def test_a_profile_photo_is_cropped_shown_everywhere_and_removed(pages, names, node, tmp_path):
    alice, bob = names("alice", "bob")
    a = pages.login(alice)
    b = pages.login(bob)
    open_direct(b, alice)
    send(b, "hi")
    open_chat(a, "Bob")
    send(a, "hi bob")  # alice writes to bob: bob is her contact, who may see her photo

    a.click("#open-settings")
    with a.expect_file_chooser() as chooser:
        a.click("#photo-change")
    chooser.value.set_files(portrait(tmp_path))
    dialog = a.locator("#photo-dialog")
    expect(dialog).to_be_visible()
    a.locator("#photo-zoom").fill("1.5")
    a.locator("#photo-canvas").focus()
    a.keyboard.press("ArrowDown")  # move the square down a little
    shot(a, "56-photo-crop")
    dialog.get_by_role("button", name="Use this photo").click()
    expect(a.locator("#toast")).to_have_text("Profile photo updated.")
    expect(shown_photo(a.locator("#settings-avatar"))).to_be_visible()
    expect(a.locator("#photo-remove")).to_be_visible()

    me = httpx.get(f"{node.url}/api/me", headers=auth(node, alice)).json()["user"]
    info = httpx.get(f"{node.url}/api/media/{me['photo']}/info", headers=auth(node, alice)).json()["media"]
    assert (info["width"], info["height"], info["mime"]) == (512, 512, "image/jpeg")  # a square, as cropped

    # on bob's side at once: the chat list, the header, the contact's page
    row = b.locator("#chat-list .chat-item").first
    expect(shown_photo(row.locator(".avatar"))).to_be_visible()
    expect(shown_photo(b.locator("#chat-avatar"))).to_be_visible()
    b.click("#chat-title-button")
    expect(shown_photo(b.locator("#info-body .info-head .avatar"))).to_be_visible()
    shot(b, "57-photo-seen")
    b.keyboard.press("Escape")

    a.click("#photo-remove")
    expect(a.locator("#toast")).to_have_text("Profile photo removed.")
    expect(shown_photo(row.locator(".avatar"))).to_have_count(0)
    expect(row.locator(".avatar")).to_have_text("A")  # initials again


def test_a_group_photo_by_an_admin_and_a_photo_hidden_by_privacy(pages, names, node, tmp_path):
    alice, bob, carol = names("alice", "bob", "carol")
    group = {"title": "Sailing", "usernames": [bob]}
    assert httpx.post(f"{node.url}/api/groups", json=group, headers=auth(node, alice)).status_code == 201
    a, b = pages.login(alice), pages.login(bob)
    open_chat(a, "Sailing")
    a.click("#chat-title-button")
    with a.expect_file_chooser() as chooser:
        a.locator("#info-body").get_by_role("button", name="Add a group photo").click()
    chooser.value.set_files(portrait(tmp_path))
    a.locator("#photo-dialog").get_by_role("button", name="Use this photo").click()
    expect(a.locator("#info-body").get_by_role("button", name="Remove group photo")).to_be_visible()
    a.keyboard.press("Escape")
    open_chat(b, "Sailing")
    expect(b.locator("#message-list .system-note").last).to_have_text("Alice changed the group photo")
    expect(shown_photo(b.locator("#chat-avatar"))).to_be_visible()
    expect(shown_photo(b.locator("#chat-list .chat-item").first.locator(".avatar"))).to_be_visible()
    b.click("#chat-title-button")
    expect(b.locator("#info-body").get_by_role("button", name="Add a group photo")).to_have_count(0)  # admins only
    b.keyboard.press("Escape")

    # carol sets a photo and "nobody" may see it: bob, in a chat with her, sees initials
    c = pages.login(carol)
    c.click("#open-settings")
    with c.expect_file_chooser() as chooser:
        c.click("#photo-change")
    chooser.value.set_files(portrait(tmp_path))
    c.locator("#photo-dialog").get_by_role("button", name="Use this photo").click()
    expect(c.locator("#toast")).to_have_text("Profile photo updated.")
    c.select_option("#settings-last-seen", "nobody")
    expect(c.locator("#settings-last-seen")).to_be_enabled()
    open_direct(b, carol)
    expect(b.locator("#chat-avatar")).to_have_text("C")
    expect(shown_photo(b.locator("#chat-avatar"))).to_have_count(0)
