"""Reconnects: everything missed arrives once, in order, with no gap at the seam."""

from __future__ import annotations

import trio
import trio.lowlevel


async def test_reconnect_in_the_middle_of_a_burst_misses_and_duplicates_nothing(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    total = 1000
    received: list[int] = []
    sent_all = trio.Event()

    async def sender() -> None:
        async with alice.connect() as a:
            for start in range(0, total, 20):
                await a.send_many([{"chat": chat["id"], "text": f"m{i}"} for i in range(start, start + 20)])
                await trio.lowlevel.checkpoint()
        sent_all.set()

    async def receive(conn, until: int | None) -> None:
        async for event in conn.events():
            if event["type"] == "message":
                received.append(event["seq"])
                if until is not None and len(received) >= until:
                    return
                if len(received) == total:
                    return

    with trio.move_on_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            for cut in (150, 400, 700):  # three connections cut mid-stream
                async with bob.connect() as b:
                    await receive(b, cut)
                # what the device took in before the cut but the test had not read yet
                received.extend(e["seq"] for e in b.events_nowait() if e["type"] == "message")
            await sent_all.wait()
            async with bob.connect() as b:
                if len(received) < total:
                    await receive(b, None)
    missing = sorted(set(range(1, total + 1)) - set(received))
    assert sent_all.is_set(), f"sender stuck; received {len(received)}, missing {missing[:20]}"
    assert received == list(range(1, total + 1)), f"missing {missing[:20]}"  # in order, none missed, none twice


async def test_resume_with_cursor_replays_only_what_is_missing(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with alice.connect() as a:
        for i in range(5):
            await a.send_text(chat["id"], f"m{i}")
    async with bob.connect() as b:
        await b.synced.wait()
        seqs = [e["seq"] for e in b.events_nowait() if e["type"] == "message"]
        assert seqs == [1, 2, 3, 4, 5]
    async with alice.connect() as a:
        await a.send_text(chat["id"], "m5")
    async with bob.connect() as b:  # the client presents {chat: 5}
        await b.synced.wait()
        assert [e["text"] for e in b.events_nowait() if e["type"] == "message"] == ["m5"]
    bob.cursors.clear()
    async with bob.connect() as b:  # a new device with no cursor gets the whole history
        await b.synced.wait()
        assert [e["seq"] for e in b.events_nowait() if e["type"] == "message"] == [1, 2, 3, 4, 5, 6]


async def test_messages_sent_while_catching_up_are_not_duplicated(node, users):
    """The device's own sends during its replay are acked, not echoed back by the replay."""
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with bob.connect() as b:
        for i in range(300):
            await b.send_text(chat["id"], f"b{i}") if i % 100 == 0 else None
        await b.send_many([{"chat": chat["id"], "text": f"x{i}"} for i in range(200)])
    alice.cursors.clear()
    async with alice.connect() as a:
        ack = await a.send_text(chat["id"], "sent during replay")
        await a.synced.wait()
        events = a.events_nowait()
        seqs = [e["seq"] for e in events if e["type"] == "message"]
        assert ack["seq"] not in seqs
        assert sorted(seqs + [ack["seq"]]) == list(range(1, ack["seq"] + 1))
        assert len(seqs) == len(set(seqs))
