"""The read hub (node/core/readhub.py, docs/architecture.md): one task reads every socket
between messages and handles what finishes at once; whatever must await goes to the
session's own task, and the device's frames are still handled one at a time, in order."""

from __future__ import annotations

import contextlib
import select
import threading

import orjson
import pytest
import trio
import trio.testing
from conftest import new_user

from node import hookimpl
from node.core.operations import MarkDelivered
from node.core.readhub import ROOM_PER_ROUND
from node.testing import open_test_node


class Latch:
    """A chat-socket event type whose handler waits until the test lets it go."""

    name = "latch"

    def __init__(self, expected: int = 1) -> None:
        self.release = trio.Event()
        self.entered = trio.Event()  # set once `expected` handlers are holding
        self._expected = expected

    @hookimpl
    def register_frame_types(self):
        async def hold(client, event):
            self._expected -= 1
            if self._expected <= 0:
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


async def test_sends_beyond_the_devices_send_slots_wait_for_one_in_order(tmp_path):
    """A device has outgoing_queue / 2 sends in flight at most. Frames that arrive while
    every slot is taken are finished by the session's task once a slot frees (an ack), in
    the order they came, each acknowledged once, none lost."""
    latch = Latch()
    async with open_test_node(tmp_path, plugins=[latch], config={"limits": {"outgoing_queue": 16}}) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a, bob.connect() as b:
            await a.wait_for("synced")
            # While the session's task holds, 40 sends gather in its socket; it then reads
            # them together and handles them one after the other without waiting, so the
            # ninth finds the 8 slots taken (none can be acknowledged before a commit).
            await a.send_events({"type": "hold"})
            with trio.fail_after(5):
                await latch.entered.wait()
            for i in range(40):
                await a.send_events({"type": "send", "client_msg_id": f"s{i}", "chat": chat["id"], "kind": "text",
                                     "text": f"t{i}"})
            latch.release.set()
            await a.wait_for("held")
            acks = [await a.wait_for("ack") for _ in range(40)]
            assert [ack["client_msg_id"] for ack in acks] == [f"s{i}" for i in range(40)]
            assert [ack["seq"] for ack in acks] == list(range(1, 41))
            for i in range(40):
                assert (await b.wait_for("message"))["text"] == f"t{i}"
            # Every slot came back: the device can send again at once.
            await a.send_text(chat["id"], "after")
            await b.wait_for("message", text="after")
        await alice.aclose(), await bob.aclose()


async def test_a_full_sequencer_queue_makes_devices_wait_and_loses_nothing(tmp_path):
    """More events at once than the sequencer's queue holds (4,096): a device whose event
    finds it full waits for room, every event is applied, and what follows is handled."""
    devices = 20  # each with a frame of 256 events: 5,120
    latch = Latch(expected=devices)
    async with open_test_node(tmp_path, plugins=[latch]) as node:
        alice = await new_user(node, "alice")
        users = [await new_user(node, f"user{i}") for i in range(devices)]
        chats = [await alice.open_direct(username=f"user{i}") for i in range(devices)]
        async with contextlib.AsyncExitStack() as stack:
            a = await stack.enter_async_context(alice.connect())
            conns = [await stack.enter_async_context(user.connect(auto_ack=False)) for user in users]
            for chat, conn in zip(chats, conns, strict=True):
                await a.send_text(chat["id"], "hello")
                await conn.wait_for("message", text="hello")
            applied = node.chats.applied
            # Every device's task holds on the latch while its frame of 256 events gathers in
            # its socket; released together, the tasks offer 5,120 events in one round of the
            # scheduler, before the sequencer can take any.
            for conn in conns:
                await conn.send_events({"type": "hold"})
            with trio.fail_after(5):
                await latch.entered.wait()
            for chat, conn in zip(chats, conns, strict=True):
                await conn.send_events([{"type": "received", "chat": chat["id"], "seq": 1}] * 256)
                await conn.send_events({"type": "ping"})
            latch.release.set()
            with trio.fail_after(30):
                for conn in conns:
                    await conn.wait_for("held")
                    await conn.wait_for("pong")
                for _ in conns:  # each chat's delivered cursor moved
                    await a.wait_for("delivered", seq=1)
            assert node.chats.applied - applied >= devices * 256
        for user in (alice, *users):
            await user.aclose()


@pytest.mark.engine("lmdb")  # the commit is held with LMDB's write lock; the hub is the same on both
async def test_the_hub_leaves_frames_in_their_sockets_while_the_sequencer_queue_is_nearly_full(tmp_path):
    """While the sequencer's queue lacks room for a round of reads, the hub reads nothing:
    a frame waits in its socket instead of being read into a full queue (and its session
    handed back to wait on its own). Once the sequencer takes a batch, it is read and
    applied with everything queued before it; nothing is lost."""
    async with open_test_node(tmp_path) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a, bob.connect() as b:
            await a.send_text(chat["id"], "first")
            await b.wait_for("message", text="first")
            (session,) = node.hub.sessions_of(int(alice.user["id"]))
            locked, release = trio.Event(), threading.Event()
            token = trio.lowlevel.current_trio_token()

            def hold_the_write_lock() -> None:  # in a thread: the node's next commit waits for it
                txn = node.storage.env.begin(write=True)
                try:
                    trio.from_thread.run_sync(locked.set, trio_token=token)
                    release.wait()
                finally:
                    txn.abort()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, hold_the_write_lock)
                try:
                    await locked.wait()
                    await a.send_events(_send("held", chat["id"]))  # its commit waits for the lock
                    await trio.testing.wait_all_tasks_blocked()
                    applied = node.chats.applied
                    filler = node.chats.room() - ROOM_PER_ROUND + 1
                    for _ in range(filler):  # without a checkpoint: the sequencer takes none
                        assert node.chats.submit_nowait(MarkDelivered(int(bob.user["id"]), int(chat["id"]), 1))
                    assert node.chats.room() == ROOM_PER_ROUND - 1
                    frames_in = session.frames_in
                    await a.send_events(_send("waits", chat["id"]))
                    await trio.testing.wait_all_tasks_blocked()
                    assert session.frames_in == frames_in  # not read...
                    assert select.select([session.ws.fileno()], [], [], 0)[0]  # ...but there
                finally:
                    release.set()
            with trio.fail_after(10):
                assert (await a.wait_for("ack", client_msg_id="held"))["seq"] == 2
                assert (await a.wait_for("ack", client_msg_id="waits"))["seq"] == 3
                await b.wait_for("message", text="held")
                await b.wait_for("message", text="waits")
            assert node.chats.applied - applied >= filler + 1
        await alice.aclose(), await bob.aclose()


def _send(client_msg_id: str, chat_id: str) -> dict:
    return {"type": "send", "client_msg_id": client_msg_id, "chat": chat_id, "kind": "text", "text": client_msg_id}
