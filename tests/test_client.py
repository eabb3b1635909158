"""The bundled client (node/client.py): waiting for one event never loses the others."""

from __future__ import annotations

import httpx
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


async def test_a_call_that_may_have_reached_a_node_is_repeated_elsewhere_only_if_that_is_harmless(node, users):
    """Of two nodes known, the first refuses connections or reads the request and hangs up
    (it died meanwhile): a GET goes on to the second either way; a POST only when it
    never reached the first, since it may have been done there."""
    import socket

    from node.client import ChatClient

    alice = await users("alice")
    with socket.socket() as refusing:  # bound, never listening: connections are refused
        refusing.bind(("127.0.0.1", 0))
        refused_url = f"http://127.0.0.1:{refusing.getsockname()[1]}"
        listener = await trio.open_tcp_listeners(0, host="127.0.0.1")
        dying_url = f"http://127.0.0.1:{listener[0].socket.getsockname()[1]}"

        async def read_and_hang_up(stream: trio.SocketStream) -> None:
            async with stream:
                await stream.receive_some(65536)  # the request arrived ...

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, read_and_hang_up, listener)
            for first in (refused_url, dying_url):
                client = ChatClient([first, node.http_url], token=alice.token)
                assert (await client.me())["user"]["username"] == "alice"  # GET: on the second node
                await client.aclose()
            moved = ChatClient([refused_url, node.http_url], token=alice.token)
            group = (await moved.request("POST", "/api/groups", {"title": "once"}))["chat"]  # never reached the first
            assert group["title"] == "once" and moved.base_url == node.http_url
            await moved.aclose()
            stuck = ChatClient([dying_url, node.http_url], token=alice.token)
            with pytest.raises(httpx.TransportError):  # it may have been done: not repeated
                await stuck.request("POST", "/api/groups", {"title": "twice?"})
            await stuck.aclose()
            nursery.cancel_scope.cancel()
    titles = [c["title"] for c in await alice.chats()]
    assert titles.count("once") == 1 and "twice?" not in titles
