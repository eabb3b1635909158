"""A device that stops reading is cut off (4008) without slowing anyone else."""

from __future__ import annotations

import orjson
import trio
from conftest import PASSWORD, make_config, new_user, running_node
from trio_websocket import ConnectionClosed, open_websocket_url

from node.client import ChatClient


async def test_slow_consumer_is_cut_off_while_a_fast_one_is_unaffected(tmp_path):
    config = make_config(tmp_path, limits={"outgoing_queue": 64})
    async with running_node(config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with ChatClient(node.http_url) as alice_phone:
            await alice_phone.login("alice", PASSWORD, device="phone")
            # bob's device authenticates, then stops reading: its TCP window fills up
            async with open_websocket_url(node.ws_url, message_queue_size=1) as stalled:
                await stalled.send_message(orjson.dumps({"type": "hello", "token": bob.token}).decode())
                async with alice.connect() as sender, alice_phone.connect() as fast:
                    await fast.synced.wait()
                    text = "x" * 8000
                    total = 0
                    with trio.fail_after(30):
                        for _ in range(80):  # 2000 messages of 8 kB, far beyond the socket buffers
                            acks = await sender.send_many([{"chat": chat["id"], "text": text}] * 25)
                            total += len(acks)
                        got = 0
                        while got < total:  # the fast device got every message
                            event = await fast.next_event()
                            got += event["type"] == "message"
                    # now read what the stalled device was sent: it ends with close code 4008
                    with trio.fail_after(15):
                        try:
                            while True:
                                await stalled.get_message()
                        except ConnectionClosed as exc:
                            assert exc.reason.code == 4008
        # bob reconnects and resyncs everything
        async with bob.connect() as b:
            await b.synced.wait()
            seqs = [e["seq"] for e in b.events_nowait() if e["type"] == "message"]
            assert seqs == list(range(1, total + 1))
        await alice.aclose(), await bob.aclose()
