"""`chatnode admin` in a cluster: an account disabled, reset or deleted through one node is
logged out on every node, and every node refuses it from then on."""

from __future__ import annotations

import io
import json
from contextlib import AsyncExitStack

import pytest
from conftest import close_code
from test_routing import start_cluster, user_on

from node.admin_cli import run_admin
from node.cli import _parser
from node.client import ClientError

pytestmark = pytest.mark.engine("postgresql")


async def admin_json(node, *argv: str, password: str | None = None) -> dict:
    args = _parser().parse_args(["admin", "--url", node.http_url, *argv, "--json"])
    out = io.StringIO()
    assert await run_admin(args, node.config, out, password) == 0
    return json.loads(out.getvalue())


async def test_disabling_and_deleting_reach_every_node(tmp_path):
    async with AsyncExitStack() as stack:
        cluster = await start_cluster(stack, tmp_path)
        a, b, c = cluster.nodes
        await user_on(a, "alice")
        on_b, on_c = await user_on(b, "alice", register=False), await user_on(c, "alice", register=False)
        bob = await user_on(c, "bob")
        group = await on_b.create_group("across", members=[bob.user["id"]])
        async with on_b.connect() as cb, on_c.connect() as cc:
            await cb.synced.wait(), await cc.synced.wait()
            assert (await admin_json(a, "users", "disable", "alice"))["revoked"] == 3
            assert await close_code(cb) == 4003 and await close_code(cc) == 4003
        for node in (a, b, c):
            with pytest.raises(ClientError) as info:
                await (await user_on(node, "alice", register=False)).aclose()
            assert info.value.code == "account_disabled"
        await admin_json(b, "users", "enable", "alice")
        again = await user_on(c, "alice", register=False)

        async with again.connect() as conn:
            await conn.synced.wait()
            deleted = await admin_json(a, "users", "delete", "alice", "--yes")
            assert deleted["groups_left"] == 1 and deleted["revoked"] >= 1
            assert await close_code(conn) == 4003
        events = [m.get("event") for m in await bob.history(group["id"])]
        assert events[-2:] == ["left", "promoted"]
        assert (await admin_json(c, "chats", "members", group["id"]))["chat"]["members"] == 1
        for client in (on_b, on_c, bob, again):
            await client.aclose()
