"""Sends in flight when commits start to fail (an LMDB map at its size limit). Whatever
was acknowledged is stored under its seq, nothing refused is, and every chat's log stays
gap-free, in the chat whose big messages no longer fit and in another whose small ones
still do."""

from __future__ import annotations

import pytest
import trio

from node.client import ClientError
from node.testing import make_config, new_user, running_node

pytestmark = pytest.mark.engine("lmdb")  # an LMDB map that fills up makes commits fail


async def test_sends_racing_a_full_disk_are_acked_only_if_stored_and_leave_no_gap(tmp_path):
    config = make_config(tmp_path, storage={"map_size_mb": 1, "max_map_size_mb": 2},
                         limits={"max_message_bytes": 200_000, "max_frame_bytes": 400_000})
    async with running_node(config) as node:
        users = [await new_user(node, f"user{i}") for i in range(5)]
        big = await users[0].create_group("big", usernames=["user1"])
        small = await users[2].create_group("small", usernames=["user3", "user4"])
        acked: dict[str, dict[str, int]] = {big["id"]: {}, small["id"]: {}}  # chat -> text -> seq
        refused: list[str] = []
        big_done = trio.Event()

        async def keep_sending(i: int, chat_id: str, size: int) -> None:
            """Until 20 sends in a row are refused, or the big senders are done."""
            async with users[i].connect() as conn:
                await conn.synced.wait()
                failures = 0
                for n in range(2000):
                    text = f"{i}-{n} " + "x" * size
                    try:
                        acked[chat_id][text] = (await conn.send_text(chat_id, text))["seq"]
                        failures = 0
                    except ClientError as exc:
                        assert exc.code == "unavailable"
                        refused.append(text)
                        failures += 1
                    if failures == 20 or big_done.is_set():
                        return

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in (2, 3, 4):  # small messages, which still fit after a big one did not
                    nursery.start_soon(keep_sending, i, small["id"], 10)
                async with trio.open_nursery() as big_senders:
                    for i in (0, 1):
                        big_senders.start_soon(keep_sending, i, big["id"], 150_000)
                big_done.set()
        assert acked[big["id"]] and refused  # the disk filled up while they were all sending
        for chat, reader in ((big, users[0]), (small, users[2])):
            stored = {m["seq"]: m["text"] for m in await reader.whole_history(chat["id"]) if m["kind"] == "text"}
            by_text = {text: seq for seq, text in stored.items()}
            assert all(by_text.get(text) == seq for text, seq in acked[chat["id"]].items())
            assert not [text for text in refused if text in by_text]
            seqs = sorted(stored)
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap (a group's first entries are not text)
        for user in users:
            await user.aclose()
