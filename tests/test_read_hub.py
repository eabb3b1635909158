"""The read hub (node/core/readhub.py, docs/architecture.md): one task reads every socket
between messages and handles what finishes at once; whatever must await goes to the
session's own task, and the device's frames are still handled one at a time, in order."""

from __future__ import annotations

import orjson
import trio
from conftest import new_user

from node import hookimpl
from node.testing import open_test_node


class Latch:
    """A chat-socket event type whose handler waits until the test lets it go."""

    name = "latch"

    def __init__(self) -> None:
        self.release = trio.Event()
        self.entered = trio.Event()

    @hookimpl
    def register_frame_types(self):
        async def hold(client, event):
            self.entered.set()
            await self.release.wait()
            client.send({"type": "held"})

        return {"hold": hold}


async def test_frames_after_one_that_awaits_wait_for_it_in_order(tmp_path):
    latch = Latch()
    async with open_test_node(tmp_path, plugins=[latch]) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a, bob.connect() as b:
            await a.wait_for("synced")
            await a.send_text(chat["id"], "before")  # handled by the hub at once
            await b.wait_for("message", text="before")
            # One write, three frames: the second must be awaited in the session's task,
            # and the third (which the hub could handle at once) waits behind it.
            await a.send_events({"type": "hold"})
            await a.send_events({"type": "send", "client_msg_id": "after-1", "chat": chat["id"], "kind": "text",
                                 "text": "after"})
            await a.send_events({"type": "ping"})
            with trio.fail_after(5):
                await latch.entered.wait()
            # Not a sleep to synchronise: the session is blocked on the latch, so nothing
            # after it may be acknowledged however long we look.
            with trio.move_on_after(0.3):
                event = await a.wait_for("ack", client_msg_id="after-1")
                raise AssertionError(f"a frame after the held one was handled first: {event}")
            latch.release.set()
            assert (await a.wait_for("held"))["type"] == "held"
            ack = await a.wait_for("ack", client_msg_id="after-1")
            assert ack["seq"] == 2
            await a.wait_for("pong")
            await b.wait_for("message", text="after")
            # Back between messages, the hub reads for the session again.
            await a.send_text(chat["id"], "again")
            await b.wait_for("message", text="again")
        await alice.aclose(), await bob.aclose()


async def test_a_frame_of_several_events_and_bad_frames_through_the_hub(tmp_path):
    async with open_test_node(tmp_path) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a, bob.connect() as b:
            await a.wait_for("synced")
            events = [{"type": "send", "client_msg_id": f"m{i}", "chat": chat["id"], "kind": "text", "text": f"t{i}"}
                      for i in range(3)]
            await a.send_events(events)
            for i in range(3):
                await b.wait_for("message", text=f"t{i}")
            await a.ws.send_message(b"\x00binary")
            assert (await a.wait_for("error"))["code"] == "bad_request"
            await a.ws.send_message("not json")
            assert (await a.wait_for("error"))["code"] == "invalid_json"
            await a.ws.send_message(orjson.dumps({"type": "nonsense"}).decode())
            assert (await a.wait_for("error"))["code"] == "unknown_type"
            await a.send_text(chat["id"], "still served")
            await b.wait_for("message", text="still served")
        await alice.aclose(), await bob.aclose()


async def test_a_connection_dropped_without_a_close_frame_ends_its_session(tmp_path):
    """The hub finds the end of the connection and the session's task finds out how it ended
    (1006): the device is detached, not read again and again."""
    async with open_test_node(tmp_path) as node:
        alice = await new_user(node, "alice")
        alice_id = int(alice.user["id"])
        offline = trio.Event()
        node.hub.on_user_offline.append(lambda user_id: user_id == alice_id and offline.set())
        async with alice.connect() as a:
            await a.wait_for("synced")  # (sent once the session is attached)
            assert node.hub.sessions_of(alice_id)
            await a.ws._stream.aclose()  # the TCP connection ends; no close frame
            with trio.fail_after(5):
                await offline.wait()
            assert not node.hub.sessions_of(alice_id)
        await alice.aclose()
