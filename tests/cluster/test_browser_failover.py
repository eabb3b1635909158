"""The web client outlives its node: three `chatnode serve` processes on one PostgreSQL,
Alice's page served by node A, Bob's by node B, in Debian's Chromium.

A freezes (SIGSTOP): to the cluster it is gone, to Alice's page it is a socket that says
nothing. Alice sends a message into it, Bob sends two (stored once B or C took A's chats
over). Then A is killed (-9) while B and C stand still for a moment, so that no node
answers Alice's page: it says so, and Alice types another message. When B and C run
again the page reconnects to one of them by itself, shows Bob's two messages once, and
its own two are stored and delivered once. Its HTTP calls follow the socket: the chat
list, an upload and a signed photo come from the new node, through CORS and the page's CSP.
Only the processes started here are signalled, by PID.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator

import httpx
import pytest
from conftest import PASSWORD, storage_toml
from harness import NodeProcess
from test_browser import (
    DESKTOP,
    browser,  # noqa: F401 (a fixture)
    expect,
    lake_photo,
    open_chat,
    open_direct,
    own_status,
    seqs,
    shot,
    start_node_process,
    texts,
    wait_until,
)

pytestmark = [pytest.mark.browser, pytest.mark.engine("postgresql")]  # a cluster keeps its state in PostgreSQL
SLOW = 30_000  # ms for what waits on failure detection on a loaded machine


class Member(NodeProcess):
    """A cluster member as a process, driven from sync (Playwright) code; signalled by PID."""

    popen: subprocess.Popen | None = None

    def start_now(self) -> None:
        self.popen = start_node_process(self.config, self.url)

    def signal(self, sig: int) -> None:
        assert self.popen is not None and self.popen.poll() is None
        os.kill(self.popen.pid, sig)

    def stop_now(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        os.kill(self.popen.pid, signal.SIGCONT)  # a frozen one must run to stop
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@pytest.fixture
def cluster(tmp_path) -> Iterator[list[Member]]:
    storage = storage_toml(tmp_path / "cluster-db")
    first = Member(tmp_path, 1, [], storage)
    nodes = [first] + [Member(tmp_path, i, [first.cluster_address], storage) for i in (2, 3)]
    try:
        for node in nodes:
            node.start_now()
        # every page learns all three nodes, and each node's CSP names the others
        wait_until(lambda: all(len(httpx.get(f"{n.url}/api/info").json()["nodes"]) == 3 for n in nodes),
                   "the cluster to form", timeout=30)
        yield nodes
    finally:
        for node in nodes:
            node.stop_now()


def register(node: Member, username: str, display_name: str) -> None:
    body = {"username": username, "password": PASSWORD, "display_name": display_name}
    response = httpx.post(f"{node.url}/api/register", json=body)
    assert response.status_code == 201, response.text


def watched_page(browser, node: Member, problems: list[str]):
    """A page of the client served by `node`; CSP violations and uncaught errors are noted."""
    context = browser.new_context(viewport=DESKTOP, base_url=node.url)
    context.set_default_timeout(10_000)
    page = context.new_page()
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if "Content Security Policy" in m.text or "Uncaught" in m.text else None)
    page.goto("/")
    return page


def log_in(page, username: str) -> None:
    page.fill("#auth-username", username)
    page.fill("#auth-password", PASSWORD)
    page.click("#auth-submit")
    expect(page.locator("#main-view")).to_be_visible()
    page.click("#notify-later")


def send(page, text: str) -> None:
    page.fill("#compose-text", text)
    page.press("#compose-text", "Enter")


def test_a_page_moves_to_a_surviving_node_when_its_node_is_killed(browser, cluster, tmp_path):
    node_a, node_b, node_c = cluster
    register(node_a, "alice", "Alice")
    register(node_a, "bob", "Bob")
    problems: list[str] = []
    a = watched_page(browser, node_a, problems)
    b = watched_page(browser, node_b, problems)
    sockets: list[str] = []  # the chat sockets Alice's page opened, in order
    a.on("websocket", lambda ws: sockets.append(ws.url))
    log_in(a, "alice")
    log_in(b, "bob")
    assert sockets == [f"ws://127.0.0.1:{node_a.ws_port}/ws"]  # her own node, while it lives
    open_direct(a, "bob")
    send(a, "before")
    open_chat(b, "Alice")
    send(b, "hello from B")
    expected = ["before", "hello from B"]
    expect(a.locator("#message-list .msg .text")).to_have_text(expected)

    # A freezes: what Alice sends now reaches its socket and is never answered; B or C
    # take A's chats over and store what Bob sends, which Alice's frozen socket cannot bring
    node_a.signal(signal.SIGSTOP)
    send(a, "in flight")
    expect(own_status(a, "in flight")).to_have_attribute("data-status", "pending")
    for text in ("while A is down 1", "while A is down 2"):
        send(b, text)
        expect(own_status(b, text)).to_have_attribute("data-status", re.compile("sent|delivered|read"), timeout=SLOW)
    assert texts(a) == [*expected, "in flight"]

    # A dies while no other node answers either: Alice's page is cut off, and says so
    requests: list[str] = []
    a.on("request", lambda request: requests.append(request.url))
    node_b.signal(signal.SIGSTOP)
    node_c.signal(signal.SIGSTOP)
    try:
        node_a.signal(signal.SIGKILL)
        node_a.popen.wait(timeout=10)
        expect(a.locator("#conn-banner")).to_contain_text(re.compile("Not connected|Connecting"))
        send(a, "typed during the outage")
        expect(own_status(a, "typed during the outage")).to_have_attribute("data-status", "pending")
        expect(a.locator("#conn-banner")).to_contain_text("(2 waiting to send)")  # both, the one in flight too
        shot(a, "failover-1-cut-off")
    finally:
        node_b.signal(signal.SIGCONT)
        node_c.signal(signal.SIGCONT)
    expected += ["while A is down 1", "while A is down 2", "in flight", "typed during the outage"]
    for page in (a, b):
        expect(page.locator("#message-list .msg .text")).to_have_text(expected, timeout=SLOW)
    expect(a.locator("#conn-banner")).to_be_hidden()
    expect(own_status(a, "typed during the outage")).to_have_attribute("data-status", "read", timeout=SLOW)
    new_node = next(n for n in (node_b, node_c) if sockets[-1] == f"ws://127.0.0.1:{n.ws_port}/ws")
    assert all(not url.startswith(f"ws://127.0.0.1:{node_a.ws_port}") for url in sockets[1:]), sockets
    # its HTTP calls went with the socket (A was only asked for /api/info, and did not answer)
    assert any(url.startswith(f"{new_node.url}/api/chats") for url in requests), requests
    assert all(url == f"{node_a.url}/api/info" for url in requests if url.startswith(node_a.url)), requests

    # an upload and its signed photo, from the new node (a preflight, and the CSP's img-src)
    photo = tmp_path / "lake.jpg"
    photo.write_bytes(lake_photo())
    a.set_input_files("#file-input", str(photo))
    a.fill("#attach-caption", "after the failover")
    a.click("#attach-send")
    image = a.locator("#message-list .media-image img")
    expect(image).to_have_count(1, timeout=SLOW)
    wait_until(lambda: image.evaluate("img => img.complete && img.naturalWidth") > 0, "the photo to load", 30)
    assert image.get_attribute("src").startswith(f"{new_node.url}/api/media/")
    expected.append("after the failover")
    expect(a.locator("#message-list .msg .text")).to_have_text(expected, timeout=SLOW)
    shot(a, "failover-2-moved")

    # each message once, in the same order everywhere, and stored once
    for page in (a, b):
        assert seqs(page) == sorted(set(seqs(page)))
    assert seqs(a) == seqs(b) and texts(a) == expected
    token = httpx.post(f"{new_node.url}/api/login", json={"username": "bob", "password": PASSWORD}).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    chat = httpx.get(f"{new_node.url}/api/chats", headers=headers).json()["chats"][0]
    stored = httpx.get(f"{new_node.url}/api/chats/{chat['id']}/messages", headers=headers).json()["messages"]
    assert [m.get("text") or m.get("caption") for m in stored] == expected
    assert not problems, problems
    for page in (a, b):
        page.context.close()
