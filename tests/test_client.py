"""The bundled client (node/client.py): waiting for one event never loses the others."""

from __future__ import annotations

import pytest
import trio


async def test_wait_for_keeps_the_events_it_skips(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with alice.connect() as a, bob.connect() as b:
        await a.synced.wait()
        await b.synced.wait()
        first = await a.send_text(chat["id"], "one")
        second = await a.send_text(chat["id"], "two")
        # bob's device acknowledges both; alice waits for the second receipt first ...
        delivered = await a.wait_for("delivered", where=lambda e: e["seq"] == second["seq"])
        assert delivered["user"] == bob.user["id"]
        # ... and the acks it passed over are still there, oldest first
        assert (await a.wait_for("ack"))["seq"] == first["seq"]
        assert (await a.next_event())["type"] == "synced"
        rest = [(e["type"], e.get("seq")) for e in a.events_nowait()]
        assert ("ack", second["seq"]) in rest and ("delivered", second["seq"]) not in rest  # taken once only
        # bob: messages skipped while waiting for the second come back through events()
        assert (await b.wait_for("message", text="two"))["seq"] == second["seq"]
        seen = []
        async for event in b.events():
            seen.append(event["type"])
            if event["type"] == "message":
                assert event["text"] == "one"
                break
        assert seen == ["synced", "message"]
        assert b.events_nowait() == []


async def test_wait_for_times_out_and_keeps_everything(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with alice.connect() as a, bob.connect() as b:
        await b.synced.wait()
        await a.send_text(chat["id"], "hello")
        await b.wait_for("message")
        with pytest.raises(trio.TooSlowError):
            await a.wait_for("message", timeout=0.3)  # nothing comes back to alice
        assert [e["type"] for e in a.events_nowait()][:1] == ["synced"]
