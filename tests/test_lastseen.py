"""Last-seen plugin: coalesced presence, persisted last seen, privacy, typing, analytics."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import orjson
import pytest
import trio
from conftest import flushed, make_config, new_user, running_node, wait_for_notifications

from node.client import ClientError
from node.testing import wait_until

FAST = {"plugins": {"lastseen": {"grace": 0.2, "typing_interval": 1.0}}}


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path, **FAST)


async def presence_events(conn, user_id):
    return [e for e in conn.events_nowait() if e["type"] == "presence" and e["user"] == user_id]


async def gone(node, *clients) -> None:
    """Until the node has seen the last sockets of these users close, and its plugins have
    handled it (the last-seen times are noted)."""
    await wait_until(lambda: not any(node.hub.is_online(int(c.user["id"])) for c in clients))
    await wait_for_notifications(node)


async def wrote(node, writer, reader) -> None:
    """`writer` writes to `reader` in their 1-1 chat (posted by the node: no connection, so
    no presence change of its own): `reader` is now `writer`'s contact."""
    chat = await writer.open_direct(user_id=reader.user["id"])
    await node.post_message(int(writer.user["id"]), int(chat["id"]), {"kind": "text", "text": "hi"})


async def test_presence_goes_to_contacts_and_last_seen_is_kept(node, users):
    alice, bob, carol = await users("alice"), await users("bob"), await users("carol")
    await wrote(node, bob, alice)
    async with alice.connect() as a, carol.connect() as c:
        async with bob.connect():
            online = await a.wait_for("presence", user=bob.user["id"])
            assert online["online"] is True
        offline = await a.wait_for("presence", user=bob.user["id"])
        assert offline["online"] is False and offline["last_seen"] > 0
        assert await presence_events(c, bob.user["id"]) == []  # bob never wrote to carol
    seen = await alice.presence(bob.user["id"])
    assert seen["online"] is False and seen["last_seen"] == offline["last_seen"]


async def test_flapping_is_coalesced(node, users):
    alice, bob, dave = await users("alice"), await users("bob"), await users("dave")
    await wrote(node, bob, alice)
    await wrote(node, dave, alice)
    async with alice.connect() as a:
        await a.synced.wait()
        for _ in range(5):
            async with bob.connect() as b:
                await b.synced.wait()
        async with dave.connect():  # a change after bob's last: told after anything of bob's would be
            await a.wait_for("presence", user=dave.user["id"], online=True)
        assert await presence_events(a, bob.user["id"]) == []  # never online for a whole grace period


async def test_last_seen_survives_a_restart(tmp_path):
    config = make_config(tmp_path, **FAST)
    async with running_node(config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        await wrote(node, bob, alice)
        async with bob.connect():
            pass
        await gone(node, bob)
        before = await alice.presence(bob.user["id"])
        await alice.aclose(), await bob.aclose()
    async with running_node(config) as node:
        from conftest import PASSWORD

        from node.client import ChatClient

        async with ChatClient(node.http_url) as alice:
            await alice.login("alice", PASSWORD)
            assert (await alice.presence(before["user"]))["last_seen"] == before["last_seen"] > 0


@pytest.mark.parametrize(
    "setting, viewer_setting, chat, visible",
    [
        ("everyone", "contacts", None, True),
        ("contacts", "contacts", "subject wrote", True),  # the viewer is the subject's contact
        ("contacts", "contacts", "viewer opened", False),  # a chat the viewer opened is no consent
        ("contacts", "contacts", None, False),
        ("nobody", "contacts", "subject wrote", False),
        ("everyone", "nobody", "subject wrote", False),  # reciprocal: hide yours, see no one's
    ],
)
async def test_last_seen_privacy(node, users, setting, viewer_setting, chat, visible):
    viewer, subject = await users("viewer"), await users("subject")
    await subject.settings(last_seen=setting)
    await viewer.settings(last_seen=viewer_setting)
    if chat == "viewer opened":
        await viewer.open_direct(username="subject")
    elif chat == "subject wrote":
        await wrote(node, subject, viewer)
    async with subject.connect():
        pass
    await gone(node, subject)
    seen = await viewer.presence(subject.user["id"])
    assert (seen["last_seen"] is not None) == visible
    assert seen.get("hidden", False) == (not visible)


async def test_blocked_users_do_not_see_presence(node, users):
    alice, bob, carol = await users("alice"), await users("bob"), await users("carol")
    await alice.open_direct(username="bob")
    await alice.open_direct(username="carol")  # carol, not blocked, is told when bob would be
    await alice.settings(last_seen="everyone")
    await alice.block(bob.user["id"])
    async with bob.connect() as b, carol.connect() as c:
        async with alice.connect():
            await c.wait_for("presence", user=alice.user["id"], online=True)
        await c.wait_for("presence", user=alice.user["id"], online=False)
        await flushed(b)
        assert await presence_events(b, alice.user["id"]) == []
    assert (await bob.presence(alice.user["id"]))["hidden"] is True


async def test_typing_is_forwarded_coalesced_and_never_stored(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with alice.connect() as a, bob.connect() as b:
        await b.synced.wait()
        for _ in range(5):
            await a.typing(chat["id"])
        hint = await b.wait_for("typing")
        assert hint["user"] == alice.user["id"] and hint["typing"] is True and hint["expires_in"] > 0
        await a.typing(chat["id"], False)
        stop = await b.wait_for("typing")
        assert stop["typing"] is False
        await flushed(a, b)
        assert [e for e in b.events_nowait() if e["type"] == "typing"] == []  # the other four were coalesced
    assert await bob.history(chat["id"]) == []


async def test_analytics_events_are_appended_as_json_lines(tmp_path):
    config = make_config(tmp_path, plugins={"analytics": {"enabled": True, "flush_interval": 0.1}, **FAST["plugins"]})
    async with running_node(config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a:
            await a.send_text(chat["id"], "secret text")
            await a.typing(chat["id"])
        await gone(node, alice)  # written at the latest as the node stops
        await alice.aclose(), await bob.aclose()
    lines = [orjson.loads(line) for line in (tmp_path / "data" / "analytics.jsonl").read_bytes().splitlines()]
    assert {e["event"] for e in lines} >= {"online", "offline", "message", "typing"}
    assert all(e["user"] == alice.user["id"] for e in lines)
    assert b"secret text" not in (tmp_path / "data" / "analytics.jsonl").read_bytes()


async def test_a_reconnect_storm_loses_no_presence_change(tmp_path):
    """Many devices dropping at once: last-seen times are batched into commits instead of
    one commit each, so the plugin's notification queue never overflows."""
    config = make_config(tmp_path, plugins={"event_queue": 16, "lastseen": {"grace": 0.2, "default_visibility": "everyone"}})
    async with running_node(config) as node:
        people = [await new_user(node, f"user{i}") for i in range(8)]
        for _ in range(5):
            async with trio.open_nursery() as nursery:
                for person in people:
                    nursery.start_soon(connect_and_leave, person)
        await gone(node, *people)
        assert node.plugins.dropped.get("lastseen", 0) == 0
        seen = [(await people[0].presence(p.user["id"]))["last_seen"] for p in people]
        assert all(seen), seen
        for person in people:
            await person.aclose()
    async with running_node(config) as node:  # and the times were written
        async with new_client(node, "user0") as client:
            assert [(await client.presence(p.user["id"]))["last_seen"] for p in people] == seen


async def connect_and_leave(client) -> None:
    async with client.connect() as conn:
        await conn.synced.wait()


@asynccontextmanager
async def new_client(node, username):
    from conftest import PASSWORD

    from node.client import ChatClient

    async with ChatClient(node.http_url) as client:
        await client.login(username, PASSWORD)
        yield client


async def test_last_seen_reaches_the_disk_within_the_flush_interval(tmp_path):
    config = make_config(tmp_path, plugins={"lastseen": {"grace": 0.2, "flush_interval": 0.1}})
    async with running_node(config) as node:
        bob = await new_user(node, "bob")
        async with bob.connect() as b:
            await b.synced.wait()
        times = node.plugins.contexts["lastseen"].store.table("times")
        key = int(bob.user["id"]).to_bytes(8, "big")
        await wait_until(lambda: times.get(key), 5)  # nothing else commits: the plugin's own flush writes it
        assert int.from_bytes(await times.get(key), "big") > 0
        await bob.aclose()


@pytest.mark.engine("postgresql")
async def test_presence_and_last_seen_wait_out_a_database_outage(tmp_path, caplog):
    """A last-seen flush that meets a database that cannot be reached is done again once
    it is back, with the time it would have written; the node keeps running meanwhile.
    (An announcement that fails the same way: tests/cluster/test_routing_outage.py.)"""
    from pgserver import PgServer

    with PgServer() as pg:
        dsn = await trio.to_thread.run_sync(pg.create_database)
        config = make_config(tmp_path, storage={"engine": "postgresql", "dsn": dsn, "commit_timeout": 5.0},
                             plugins={"lastseen": {"grace": 0.2, "flush_interval": 0.1}})
        async with running_node(config) as node:
            alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
            chat = await alice.open_direct(username="bob")
            async with alice.connect() as a:
                async with bob.connect() as b:
                    await b.synced.wait()
                    await b.send_text(chat["id"], "hi")  # alice is bob's contact: she sees his presence
                    await a.wait_for("presence", user=bob.user["id"], online=True)
                    await trio.to_thread.run_sync(pg.kill)  # the database goes away ...
                # ... and bob goes offline meanwhile: his last-seen time cannot be written
                with caplog.at_level(logging.WARNING, logger="node.plugins.lastseen"):
                    await wait_until(lambda: any("not stored yet" in r.getMessage() for r in caplog.records))
                await trio.to_thread.run_sync(pg.resume)
                offline = await a.wait_for("presence", timeout=20, user=bob.user["id"], online=False)
                times = node.plugins.contexts["lastseen"].store.table("times")
                key = int(bob.user["id"]).to_bytes(8, "big")
                await wait_until(lambda: _stored(times, key), interval=0.05)
                assert await _stored(times, key) == offline["last_seen"]
            await alice.aclose(), await bob.aclose()


@pytest.mark.engine("postgresql")
async def test_last_seen_times_on_a_commit_that_fails_ride_on_the_next(tmp_path):
    """Last-seen times join whatever the node commits next. If that commit fails (here
    the database went away under a rename), they are kept, not dropped with it, and ride
    on the next commit once the database is back (no flush or announcement of their own
    comes first: `grace` and `flush_interval` are long)."""
    from pgserver import PgServer

    with PgServer() as pg:
        dsn = await trio.to_thread.run_sync(pg.create_database)
        config = make_config(tmp_path, storage={"engine": "postgresql", "dsn": dsn, "commit_timeout": 5.0},
                             plugins={"lastseen": {"grace": 600.0, "flush_interval": 3600.0}})
        async with running_node(config) as node:
            lastseen = node.plugins.pm.get_plugin("lastseen")
            alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
            bob_id = int(bob.user["id"])
            chat = await alice.open_direct(username="bob")
            async with alice.connect() as a:
                async with bob.connect() as b:
                    await b.synced.wait()
                    await b.send_text(chat["id"], "hi")
                await wait_until(lambda: bob_id in lastseen._unwritten)  # his time, in memory only
                seen = lastseen._unwritten[bob_id]
                await trio.to_thread.run_sync(pg.kill)
                with pytest.raises(ClientError) as refused:  # a commit (a rename: no read first) fails
                    await alice.request("PATCH", "/api/me", {"display_name": "Alice L."})
                assert refused.value.code == "unavailable", refused.value
                assert lastseen._unwritten.get(bob_id) == seen  # kept for the next commit
                await trio.to_thread.run_sync(pg.resume)
                await a.send_until_acked(chat["id"], "are you there?", client_msg_id="again")
            times = node.plugins.contexts["lastseen"].store.table("times")
            assert int.from_bytes(await times.get(bob_id.to_bytes(8, "big")), "big") == seen
            await alice.aclose(), await bob.aclose()


async def _stored(times, key: bytes) -> int | None:
    """The stored last-seen time, or None (not yet, or the database is not back yet)."""
    try:
        raw = await times.get(key)
    except Exception:  # storage still reconnecting
        return None
    return int.from_bytes(raw, "big") if raw else None
