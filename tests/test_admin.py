"""`chatnode admin` and the admin API behind it (docs/admin.md), on both engines.

A real node and real clients: the CLI runs in-process through its own entry
(`run_admin`, the code `chatnode admin` runs after parsing) against the node's admin API,
or offline on the storage of a stopped node; a few tests run it as a real process.
"""

from __future__ import annotations

import io
import json
import socket
import sys

import pytest
import trio
from conftest import ADMIN_TOKEN, PASSWORD, close_code, make_config, new_user, running_node, wait_for_notifications

from node import hookimpl, preflight
from node.admin_cli import CliError, run_admin
from node.cli import _parser
from node.client import ChatClient, ClientError

NEW_PASSWORD = "a brand new passphrase"


async def admin(config, *argv: str, url: str | None = None, password: str | None = None, raw: bool = False):
    """Run `chatnode admin [--url URL] ARGV...`; its JSON answer (with --json) or its text."""
    prefix = ["admin", *(["--url", url] if url else [])]
    args = _parser().parse_args([*prefix, *argv])
    out = io.StringIO()
    assert await run_admin(args, config, out, password) == 0
    text = out.getvalue()
    return json.loads(text) if "--json" in argv and not raw else text


def online(node):
    """`admin(...)` against a running node's API."""
    async def run(*argv: str, password: str | None = None):
        return await admin(node.config, *argv, url=node.http_url, password=password)

    return run


async def expect_client_error(code: str, coro) -> ClientError:
    with pytest.raises(ClientError) as info:
        await coro
    assert info.value.code == code, info.value
    return info.value


class Revocations:
    """Records the devices the plugins are told were logged out."""

    name = "revocations"

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    @hookimpl
    def on_device_revoked(self, user_id, device_id):
        self.seen.append((user_id, device_id))


# -- online: the admin API ----------------------------------------------------------------


async def test_create_list_find_and_show_users(tmp_path):
    config = make_config(tmp_path, accounts={"registration_open": False})
    async with running_node(config) as node:
        run = online(node)
        made = await run("users", "create", "carol", "--display-name", "Carol Jones", "--json", password=PASSWORD)
        assert made["user"]["username"] == "carol" and made["user"]["disabled"] is None
        for name in ("dave", "erin", "frank"):
            await run("users", "create", name, "--json", password=PASSWORD)
        async with ChatClient(node.http_url) as carol:  # registration is closed, the account works
            await carol.login("carol", PASSWORD, device="laptop")
            await expect_client_error("registration_closed", carol.register("mallory", PASSWORD))

        page = await run("users", "list", "--limit", "2", "--json")
        assert [u["username"] for u in page["users"]] == ["carol", "dave"] and page["next"] == "dave"
        page = await run("users", "list", "--limit", "2", "--after", "dave", "--json")
        assert [u["username"] for u in page["users"]] == ["erin", "frank"] and page["next"] is None
        assert [u["username"] for u in (await run("users", "list", "--prefix", "er", "--json"))["users"]] == ["erin"]

        found = await run("users", "find", "jones", "--json")  # display names, ignoring case
        assert [u["username"] for u in found["users"]] == ["carol"]
        assert (await run("users", "find", made["user"]["id"], "--json"))["users"][0]["username"] == "carol"

        shown = await run("users", "show", "carol", "--json")
        assert shown["user"]["id"] == made["user"]["id"] and shown["chats"] == 0
        assert [d["name"] for d in shown["devices"]] == ["laptop"]
        assert (await run("users", "show", made["user"]["id"], "--json"))["user"]["username"] == "carol"

        text = await run("users", "list")  # the table for people
        assert text.splitlines()[0].split() == ["ID", "USERNAME", "DISPLAY", "NAME", "CREATED", "STATE"]
        assert "Carol Jones" in text and "active" in text

        with pytest.raises(CliError, match="username_taken"):
            await run("users", "create", "carol", password=PASSWORD)
        with pytest.raises(CliError, match="weak_password"):
            await run("users", "create", "gina", password="short")
        with pytest.raises(CliError, match="not_found"):
            await run("users", "show", "nobody")


async def test_disabling_logs_out_every_device_and_refuses_logins_until_enabled(tmp_path):
    revocations = Revocations()
    async with running_node(make_config(tmp_path), plugins=[revocations]) as node:
        run = online(node)
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await bob.open_direct(username="alice")
        device_id = (await alice.me())["device_id"]
        async with alice.connect() as a, bob.connect() as b:
            await a.synced.wait(), await b.synced.wait()
            result = await run("users", "disable", "alice", "--json")
            assert result["revoked"] == 1 and result["user"]["disabled"]
            assert await close_code(a) == 4003
            await b.send_text(chat["id"], "still reaches a disabled account's history")
        await expect_client_error("unauthorized", alice.me())
        await expect_client_error("account_disabled", alice.login("alice", PASSWORD))
        await expect_client_error("unauthorized", alice.login("alice", "not the password"))
        await wait_for_notifications(node)
        assert revocations.seen == [(int(alice.user["id"]), int(device_id))]  # the push plugin hears it too
        assert "disabled" in await run("users", "show", "alice")

        assert (await run("users", "enable", "alice", "--json"))["user"]["disabled"] is None
        await alice.login("alice", PASSWORD)
        assert [m["text"] for m in await alice.history(chat["id"])] == ["still reaches a disabled account's history"]
        await alice.aclose(), await bob.aclose()


async def test_a_password_reset_logs_out_every_device(node):
    run = online(node)
    alice = await new_user(node, "alice")
    async with alice.connect() as a:
        await a.synced.wait()
        assert (await run("users", "password", "alice", "--json", password=NEW_PASSWORD))["revoked"] == 1
        assert await close_code(a) == 4003
    await expect_client_error("unauthorized", alice.login("alice", PASSWORD))
    await alice.login("alice", NEW_PASSWORD)
    assert (await alice.me())["user"]["username"] == "alice"
    with pytest.raises(CliError, match="weak_password"):
        await run("users", "password", "alice", password="short")
    await alice.aclose()


async def test_listing_and_revoking_devices(node):
    run = online(node)
    async with ChatClient(node.http_url) as laptop, ChatClient(node.http_url) as phone:
        await laptop.register("alice", PASSWORD)
        await laptop.login("alice", PASSWORD, device="laptop")
        phone_id = (await phone.login("alice", PASSWORD, device="phone"))["device_id"]
        devices = (await run("devices", "list", "alice", "--json"))["devices"]
        assert sorted(d["name"] for d in devices) == ["laptop", "phone"]
        assert "phone" in await run("devices", "list", "alice")
        async with laptop.connect() as lap, phone.connect() as ph:
            await lap.synced.wait(), await ph.synced.wait()
            assert (await run("devices", "revoke", "alice", phone_id, "--json"))["revoked"] == 1
            assert await close_code(ph) == 4003
            await lap.send_events({"type": "ping"})
            await lap.wait_for("pong", timeout=5)
            assert lap.closed is None
        with pytest.raises(CliError, match="not_found"):
            await run("devices", "revoke", "alice", phone_id)
        assert (await run("devices", "revoke", "alice", "--all", "--json"))["revoked"] == 1
        await expect_client_error("unauthorized", laptop.me())
        assert (await run("devices", "list", "alice", "--json"))["devices"] == []
        with pytest.raises(CliError, match="--all"):
            await run("devices", "revoke", "alice")


async def test_a_chats_members_current_and_former(node):
    run = online(node)
    alice, bob, carol = await new_user(node, "alice"), await new_user(node, "bob"), await new_user(node, "carol")
    group = await alice.create_group("plans", usernames=["bob", "carol"])
    await carol.leave(group["id"])
    shown = await run("chats", "members", group["id"], "--json")
    assert shown["chat"]["title"] == "plans" and shown["chat"]["members"] == 2
    assert [(m["user"]["username"], m["role"]) for m in shown["members"]] == [("alice", "admin"), ("bob", "member")]
    every = await run("chats", "members", group["id"], "--all", "--json")
    former = [m for m in every["members"] if not m["current"]]
    assert [m["user"]["username"] for m in former] == ["carol"] and former[0]["until_seq"] is not None
    text = await run("chats", "members", group["id"], "--all")
    assert "group 'plans'" in text and "left at" in text
    with pytest.raises(CliError, match="not_found"):
        await run("chats", "members", "12345")
    for client in (alice, bob, carol):
        await client.aclose()


async def test_deleting_an_account_keeps_its_messages_from_a_deleted_account(tmp_path):
    revocations = Revocations()
    async with running_node(make_config(tmp_path), plugins=[revocations]) as node:
        run = online(node)
        alice, bob, carol = await new_user(node, "alice"), await new_user(node, "bob"), await new_user(node, "carol")
        alice_id = alice.user["id"]
        direct = await bob.open_direct(username="alice")
        group = await alice.create_group("plans", usernames=["bob", "carol"])  # alice is its only admin
        async with alice.connect() as a, bob.connect() as b:
            await a.synced.wait(), await b.synced.wait()
            await a.send_text(direct["id"], "hi bob")
            await a.send_text(group["id"], "hi all")
            result = await run("users", "delete", "alice", "--yes", "--json")
            assert (result["revoked"], result["groups_left"], result["direct_chats"]) == (1, 1, 1)
            assert result["user"]["deleted"] and result["user"]["display_name"] == "Deleted account"
            assert await close_code(a) == 4003
            with pytest.raises(ClientError) as info:  # nothing can be sent to it 1-1
                await b.send_text(direct["id"], "are you there?")
            assert info.value.code == "blocked"
        await expect_client_error("unauthorized", alice.login("alice", PASSWORD))

        # its messages stay where they were, from "Deleted account"
        assert [m["text"] for m in await bob.history(direct["id"])] == ["hi bob"]
        messages = await bob.history(group["id"])
        assert "hi all" in [m.get("text") for m in messages]
        assert messages[-2]["kind"] == "system" and messages[-2]["event"] == "left"
        assert messages[-1]["event"] == "promoted"  # the group keeps an admin
        assert (await bob.user_info(alice_id))["display_name"] == "Deleted account"
        assert [m["user"]["username"] for m in await bob.members(group["id"])] == ["bob", "carol"]
        await expect_client_error("not_found", carol.open_direct(user_id=alice_id))
        await expect_client_error("not_found", bob.create_group("again", members=[alice_id]))
        assert [u["username"] for u in await bob.search_users("al")] == []
        await wait_for_notifications(node)
        assert [uid for uid, _ in revocations.seen] == [int(alice_id)]

        # the name is free again; the old account is found by id only
        async with ChatClient(node.http_url) as newcomer:
            await newcomer.register("alice", PASSWORD)
        assert (await run("users", "show", alice_id, "--json"))["user"]["deleted"]
        assert "deleted" in await run("users", "show", alice_id)
        with pytest.raises(CliError, match="not_found"):
            await run("users", "delete", alice_id, "--yes")
        counts = (await run("stats", "--counts", "--json"))["counts"]
        assert counts["users"]["total"] == 4 and counts["users"]["deleted"] == 1
        for client in (alice, bob, carol):
            await client.aclose()


async def test_stats_show_the_node_and_its_counters(node):
    run = online(node)
    alice = await new_user(node, "alice")
    view = await run("stats", "--json")
    assert view["node"]["engine"] == node.storage.info.name and view["node"]["id"] == node.config.node.id
    assert view["statistics"]["storage"]["commits"] >= 1 and "counts" not in view
    view = await run("stats", "--counts", "--json")
    assert view["counts"]["users"]["total"] == 1 and view["counts"]["devices"] == 1
    text = await run("stats")
    assert "storage.commits" in text and f"node {node.config.node.id}" in text
    await alice.aclose()


async def test_the_admin_token_is_required_when_one_is_set(tmp_path):
    config = make_config(tmp_path, admin={"token": ADMIN_TOKEN})
    async with running_node(config) as node:
        without = make_config(tmp_path)  # the same node, a config without the token
        with pytest.raises(CliError, match="admin token"):
            await admin(without, "users", "list", url=node.http_url)
        assert (await admin(without, "--token", ADMIN_TOKEN, "users", "list", "--json",
                            url=node.http_url))["users"] == []
        assert (await admin(config, "users", "list", "--json", url=node.http_url))["users"] == []


async def test_a_node_that_is_not_there_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    with pytest.raises(CliError, match="cannot reach the node"):
        await admin(make_config(tmp_path), "users", "list", url=f"http://127.0.0.1:{port}")


# -- offline: a stopped node's storage -------------------------------------------------------


async def test_offline_commands_on_a_stopped_node(tmp_path):
    config = make_config(tmp_path)
    async with running_node(config) as node:
        alice = await new_user(node, "alice")
        alice_id, alice_device = alice.user["id"], (await alice.me())["device_id"]
        group = await alice.create_group("plans")
        await alice.aclose()
    made = await admin(config, "--offline", "users", "create", "bob", "--json", password=PASSWORD)
    assert [u["username"] for u in (await admin(config, "--offline", "users", "list", "--json"))["users"]] \
        == ["alice", "bob"]
    assert (await admin(config, "--offline", "users", "find", "bo", "--json"))["users"][0]["id"] == made["user"]["id"]
    assert (await admin(config, "--offline", "devices", "list", "alice", "--json"))["devices"][0]["device_id"] \
        == alice_device
    assert (await admin(config, "--offline", "users", "disable", "alice", "--json"))["revoked"] == 1
    assert (await admin(config, "--offline", "users", "enable", "alice", "--json"))["revoked"] == 0
    assert (await admin(config, "--offline", "users", "password", "alice", "--json",
                        password=NEW_PASSWORD))["revoked"] == 0
    members = await admin(config, "--offline", "chats", "members", group["id"], "--json")
    assert [m["user"]["username"] for m in members["members"]] == ["alice"]
    view = await admin(config, "--offline", "stats", "--json")
    assert view["node"]["running"] is False and view["counts"]["users"]["total"] == 2
    with pytest.raises(CliError, match="needs the running node"):
        await admin(config, "--offline", "users", "delete", "alice", "--yes")

    revocations = Revocations()  # the device logged out offline is told to the plugins at start
    async with running_node(config, plugins=[revocations]) as node:
        await wait_for_notifications(node)
        assert revocations.seen == [(int(alice_id), int(alice_device))]
        async with ChatClient(node.http_url) as bob, ChatClient(node.http_url) as alice:
            await bob.login("bob", PASSWORD)
            await alice.login("alice", NEW_PASSWORD)
        assert (await node.storage.kv_scan("_core/revoked", b"", None, 10)) == []


async def test_without_flags_the_cli_uses_the_running_node_or_the_storage(tmp_path, storage_engine):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = make_config(tmp_path, http={"port": port})
    async with running_node(config) as node:
        lock = preflight.prepare_data_dir(config) if storage_engine == "lmdb" else None  # as `chatnode serve` does
        try:
            alice = await new_user(node, "alice")
            async with alice.connect() as a:
                await a.synced.wait()
                await admin(config, "users", "disable", "alice")  # through the node: the socket closes
                assert await close_code(a) == 4003
            if storage_engine == "lmdb":
                with pytest.raises(CliError, match="in use by a running node"):
                    await admin(config, "--offline", "users", "list")
            else:  # reading is fine, changing is not while a node is connected to the database
                assert (await admin(config, "--offline", "users", "list", "--json"))["users"][0]["disabled"]
                with pytest.raises(CliError, match="nodes are connected to the database"):
                    await admin(config, "--offline", "users", "enable", "alice")
            await alice.aclose()
        finally:
            if lock is not None:
                lock.close()
    assert (await admin(config, "users", "enable", "alice", "--json"))["user"]["disabled"] is None  # offline now


@pytest.mark.engine("lmdb")
async def test_offline_on_a_data_dir_without_a_node_is_refused(tmp_path):
    with pytest.raises(CliError, match="no node data"):
        await admin(make_config(tmp_path), "--offline", "users", "list")


# -- the real command ------------------------------------------------------------------------


async def test_the_chatnode_admin_command(tmp_path, node):
    alice = await new_user(node, "alice")
    cmd = [sys.executable, "-m", "node", "admin", "--url", node.http_url]
    done = await trio.run_process([*cmd, "users", "list", "--json"], capture_stdout=True, capture_stderr=True)
    assert [u["username"] for u in json.loads(done.stdout)["users"]] == ["alice"]
    done = await trio.run_process([*cmd, "users", "create", "bob", "--password-stdin"], stdin=b"bob's password\n",
                                  capture_stdout=True, capture_stderr=True)
    assert done.stdout.decode().startswith("created bob (id ")
    done = await trio.run_process([*cmd, "users", "show", "nobody"], capture_stdout=True, capture_stderr=True,
                                  check=False)
    assert done.returncode == 1 and done.stderr.decode().strip().startswith("chatnode: no user 'nobody'")
    assert len(done.stderr.decode().strip().splitlines()) == 1
    done = await trio.run_process([*cmd, "users", "delete", "bob"], stdin=b"", capture_stdout=True,
                                  capture_stderr=True, check=False)
    assert done.returncode == 2 and "--yes" in done.stderr.decode()
    await alice.aclose()


async def test_output_into_a_pipe_nobody_reads_is_no_traceback(node):
    """`chatnode admin ... | head` that stops reading: exit 1, and nothing on stderr."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes a byte
    try:
        done = await trio.run_process(
            [sys.executable, "-m", "node", "admin", "--url", node.http_url, "--json", "stats"],
            stdout=write_end, capture_stderr=True, check=False)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr.decode()) == (1, "")


async def test_chatnode_cluster_members_needs_no_config_with_a_url(tmp_path, node):
    """As `chatnode admin`, `chatnode cluster members --url` works where there is no
    config.toml, and a node that is not there is exit code 1 (docs/admin.md)."""
    cmd = [sys.executable, "-m", "node", "cluster", "members", "--json", "--url"]
    done = await trio.run_process([*cmd, node.http_url], cwd=tmp_path, capture_stdout=True, capture_stderr=True,
                                  check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"enabled": False, "members": [], "statistics": {}}
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # a port no node listens on
        gone = f"http://127.0.0.1:{unused.getsockname()[1]}"
        done = await trio.run_process([*cmd, gone], cwd=tmp_path, capture_stderr=True, check=False)
    assert done.returncode == 1 and done.stderr.decode().startswith("chatnode: cannot reach the node at ")
