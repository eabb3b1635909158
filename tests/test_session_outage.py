"""A device catching up while the database cannot be reached is told to come back, not
dropped as a crashed session, and gets everything once the database is back."""

from __future__ import annotations

import logging

import pytest
import trio
from pgserver import PgServer

from node.testing import make_config, new_user, running_node, wait_until


@pytest.mark.engine("postgresql")
async def test_a_device_catching_up_through_an_outage_reconnects_and_gets_everything(tmp_path, caplog):
    with PgServer() as pg:
        dsn = await trio.to_thread.run_sync(pg.create_database)
        config = make_config(tmp_path, storage={"engine": "postgresql", "dsn": dsn, "commit_timeout": 5.0})
        async with running_node(config) as node:
            alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
            chat = await alice.open_direct(username="bob")
            async with bob.connect() as b:  # bob's token, account and chats are now in the node's caches
                await b.synced.wait()
            async with alice.connect() as a:
                for i in range(3):
                    await a.send_text(chat["id"], f"while bob was away {i}")
            await trio.to_thread.run_sync(pg.kill)
            with caplog.at_level(logging.INFO):
                async with bob.connect(reconnect=True) as b:
                    # bob's hello is answered from the caches; replaying the log needs the database
                    error = await b.wait_for("error", timeout=30)
                    assert error["code"] == "unavailable"
                    await wait_until(lambda: b.reconnects >= 1 or b.closed is not None, timeout=30)
                    await trio.to_thread.run_sync(pg.resume)
                    texts = [(await b.wait_for("message", timeout=30))["text"] for _ in range(3)]
                    await b.synced.wait()
            assert texts == [f"while bob was away {i}" for i in range(3)]
            assert not [r for r in caplog.records if "crashed" in r.getMessage()]
            await alice.aclose(), await bob.aclose()
