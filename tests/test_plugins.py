"""The plugin system: discovery, settings, the gate, isolation of failures, and the
example third-party plugin (examples/echo-bot) end to end."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import pytest
import trio
from conftest import PASSWORD, make_config, new_user, running_node, wait_for_notifications

from node import Reject, hookimpl
from node.app import serve_node
from node.client import ChatClient, ClientError
from node.config import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "echo-bot"


@pytest.fixture
def installed_echo_bot(tmp_path, monkeypatch):
    """Install the example plugin the way pip would expose it: a module plus a dist-info
    with its entry point, on sys.path, so discovery goes through importlib.metadata."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "echo_bot.py").write_text((EXAMPLE / "echo_bot.py").read_text())
    dist = site / "chatnode_echo_bot-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: chatnode-echo-bot\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[chatnode]\necho_bot = echo_bot:EchoBot\n")
    monkeypatch.syspath_prepend(str(site))
    yield
    sys.modules.pop("echo_bot", None)


async def test_the_example_plugin_is_discovered_by_entry_point_and_answers(tmp_path, installed_echo_bot, caplog):
    caplog.set_level(logging.INFO, logger="node.app")
    async with running_node(make_config(tmp_path)) as node:
        assert "echo_bot" in node.plugins.names()
        assert "plugin echo_bot 0.1.0 installed" in caplog.text  # as `chatnode plugins` lists it
        alice = await new_user(node, "alice")
        chat = await alice.open_direct(username="echobot")
        async with alice.connect() as a:
            sent = await a.send_text(chat["id"], "/echo hello there")
            answer = await a.wait_for("message", text="hello there")
            assert answer["reply_to"] == sent["id"]
            await a.send_text(chat["id"], "no command here")
            await wait_for_notifications(node)
        assert [m["text"] for m in await alice.history(chat["id"])] == ["/echo hello there", "hello there", "no command here"]
        await alice.aclose()


async def test_plugin_settings_are_validated(tmp_path, installed_echo_bot):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in \[plugins.echo_bot\]: colour"):
        await serve_node(make_config(tmp_path, plugins={"echo_bot": {"colour": "red"}}))
    with pytest.raises(ConfigError, match="plugins.lastseen.grace"):
        await serve_node(make_config(tmp_path, plugins={"lastseen": {"grace": "soon"}}))
    with pytest.raises(ConfigError, match=r"\[plugins.nonesuch\]: no plugin"):
        await serve_node(make_config(tmp_path, plugins={"nonesuch": {"x": 1}}))
    async with running_node(make_config(tmp_path, plugins={"echo_bot": {"username": "parrot"}})) as node:
        alice = await new_user(node, "alice")
        chat = await alice.open_direct(username="parrot")
        async with alice.connect() as a:
            await a.send_text(chat["id"], "/echo polly")
            await a.wait_for("message", text="polly")
        await alice.aclose()


class WordFilter:
    """Replaces a word, and refuses messages that shout."""

    name = "word_filter"

    @hookimpl
    def prepare_message(self, content):
        if content.get("text", "").isupper():
            raise Reject("no shouting")
        if "darn" in content.get("text", ""):
            return {**content, "text": content["text"].replace("darn", "d**n")}


async def test_prepare_message_transforms_or_rejects(tmp_path):
    async with trio.open_nursery() as nursery:
        node = await nursery.start(lambda task_status: serve_node(
            make_config(tmp_path), plugins=[WordFilter()], load_entrypoints=False, task_status=task_status))
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a:
            await a.send_text(chat["id"], "darn it")
            with pytest.raises(ClientError) as info:
                await a.send_text(chat["id"], "HELLO")
            assert (info.value.code, info.value.message) == ("rejected", "no shouting")
        assert [m["text"] for m in await bob.history(chat["id"])] == ["d**n it"]
        await alice.aclose(), await bob.aclose()
        node.request_shutdown()


class SlowPolisher:
    """An `async def` gate that awaits before it answers: it adds "!", passes the view it
    was given back unchanged, or refuses."""

    name = "slow_polisher"

    @hookimpl
    async def prepare_message(self, content):
        await trio.lowlevel.checkpoint()
        text = content.get("text", "")
        if text == "nope":
            raise Reject("not that")
        if text.startswith("keep"):
            return content  # the read-only view itself: no change
        return {**content, "text": text + "!"}


async def test_an_async_gate_is_awaited_and_the_plain_ones_after_it_still_run(tmp_path):
    """Gates run in pluggy's order (the last registered first): the `async def` one is
    awaited in the connection's task, then the plain one sees what it made."""
    async with trio.open_nursery() as nursery:
        node = await nursery.start(lambda task_status: serve_node(
            make_config(tmp_path), plugins=[WordFilter(), SlowPolisher()], load_entrypoints=False,
            task_status=task_status))
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a:
            await a.send_text(chat["id"], "darn it")
            await a.send_text(chat["id"], "keep as is")
            for text, why in (("nope", "not that"), ("SHOUT", "no shouting")):
                with pytest.raises(ClientError) as info:
                    await a.send_text(chat["id"], text)
                assert (info.value.code, info.value.message) == ("rejected", why)
        assert [m["text"] for m in await bob.history(chat["id"])] == ["d**n it!", "keep as is"]
        await alice.aclose(), await bob.aclose()
        node.request_shutdown()


class Broken:
    """Fails in every hook it implements."""

    name = "broken"

    def __init__(self, fail_gate: bool = False) -> None:
        self.fail_gate = fail_gate
        self.calls = 0

    @hookimpl
    def on_message_stored(self, message):
        self.calls += 1
        raise RuntimeError("boom")

    @hookimpl
    def prepare_message(self, content):
        if self.fail_gate:
            raise RuntimeError("gate boom")


async def test_a_failing_notification_is_logged_with_the_plugin_name_and_changes_nothing(tmp_path, caplog):
    broken = Broken()
    async with trio.open_nursery() as nursery:
        node = await nursery.start(lambda task_status: serve_node(
            make_config(tmp_path), plugins=[broken], load_entrypoints=False, task_status=task_status))
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        with caplog.at_level(logging.ERROR):
            async with alice.connect() as a, bob.connect() as b:
                for i in range(3):
                    await a.send_text(chat["id"], f"m{i}")
                    await b.wait_for("message", text=f"m{i}")
                await wait_for_notifications(node)
        assert broken.calls == 3
        assert node.plugins.failures["broken"] == 3
        assert any("plugin broken failed in on_message_stored" in r.getMessage() for r in caplog.records)
        await alice.aclose(), await bob.aclose()
        node.request_shutdown()


async def test_a_failing_gate_fails_closed(tmp_path):
    async with trio.open_nursery() as nursery:
        node = await nursery.start(lambda task_status: serve_node(
            make_config(tmp_path), plugins=[Broken(fail_gate=True)], load_entrypoints=False, task_status=task_status))
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a:
            with pytest.raises(ClientError) as info:
                await a.send_text(chat["id"], "hello")
            assert info.value.code == "internal"
        assert await bob.history(chat["id"]) == []
        await alice.aclose(), await bob.aclose()
        node.request_shutdown()


async def test_disabled_plugins_do_not_run(tmp_path):
    async with running_node(make_config(tmp_path, plugins={"disabled": ["receipts", "lastseen"]})) as node:
        assert "receipts" not in node.plugins.names() and "lastseen" not in node.plugins.names()
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a:
            await a.send_events({"type": "read", "chat": chat["id"], "seq": 0})
            assert (await a.wait_for("error"))["code"] == "unknown_type"
        with pytest.raises(ClientError) as info:
            await alice.presence(bob.user["id"])
        assert info.value.status == 404
        await alice.aclose(), await bob.aclose()


async def test_a_misspelled_hook_stops_startup(tmp_path):
    class Typo:
        @hookimpl
        def on_mesage_stored(self, message):
            pass

    with pytest.raises(ConfigError, match="on_mesage_stored"):
        await serve_node(make_config(tmp_path), plugins=[Typo()], load_entrypoints=False)


async def test_a_failing_startup_stops_the_node(tmp_path):
    class Faulty:
        name = "faulty"

        @hookimpl
        def startup(self, ctx, nursery):
            raise RuntimeError("cannot reach the moon")

    with pytest.raises(BaseException) as info:
        await serve_node(make_config(tmp_path), plugins=[Faulty()], load_entrypoints=False)
    assert "faulty" in repr(info.value) and "moon" in repr(info.value)


async def test_plugin_frame_type_collision_stops_startup(tmp_path):
    class Clash:
        @hookimpl
        def register_frame_types(self, ctx):
            async def handler(client, event):
                pass

            return {"send": handler}

    with pytest.raises(ConfigError, match="'send'"):
        await serve_node(make_config(tmp_path), plugins=[Clash()], load_entrypoints=False)


async def test_hooks_fire_with_their_arguments(tmp_path):
    class Recorder:
        name = "recorder"

        def __init__(self):
            self.events = []

        @hookimpl
        def on_user_online(self, user_id):
            self.events.append(("online", user_id))

        @hookimpl
        def on_user_offline(self, user_id):
            self.events.append(("offline", user_id))

        @hookimpl
        def on_delivered(self, chat_id, user_id, seq):
            self.events.append(("delivered", user_id, seq))

        @hookimpl
        def on_recipients_offline(self, message, user_ids):
            self.events.append(("offline_recipients", message.text, user_ids))

        @hookimpl
        def on_membership_changed(self, change):
            self.events.append(("membership", change["event"]))

    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        node = await nursery.start(lambda task_status: serve_node(
            make_config(tmp_path), plugins=[recorder], load_entrypoints=False, task_status=task_status))
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a:
            await a.send_text(chat["id"], "while bob is away")
            async with bob.connect() as b:
                await b.synced.wait()
                await a.wait_for("delivered")
        await alice.create_group("g", members=[bob.user["id"]])
        await wait_for_notifications(node)
        a_id, b_id = int(alice.user["id"]), int(bob.user["id"])
        assert recorder.events == [
            ("online", a_id),
            ("offline_recipients", "while bob is away", [b_id]),
            ("online", b_id),
            ("delivered", b_id, 1),
            ("offline", b_id),
            ("offline", a_id),
            ("membership", "created"),
        ]
        await alice.aclose(), await bob.aclose()
        node.request_shutdown()


async def test_device_revoked_fires_once_per_logged_out_device(tmp_path):
    """Logout, DELETE /api/me/devices/{id} and a password change each tell plugins which
    device of which user is gone, so they can drop what they keep for it."""

    class Revocations:
        name = "revocations"

        def __init__(self):
            self.seen = []

        @hookimpl
        def on_device_revoked(self, user_id, device_id):
            self.seen.append((user_id, device_id))

    recorder = Revocations()
    async with trio.open_nursery() as nursery:
        node = await nursery.start(lambda task_status: serve_node(
            make_config(tmp_path), plugins=[recorder], load_entrypoints=False, task_status=task_status))
        dana, other = ChatClient(node.http_url), await new_user(node, "erin")
        await dana.register("dana", PASSWORD)
        devices = [int((await dana.login("dana", PASSWORD, device=f"d{i}"))["device_id"]) for i in range(5)]
        uid = int(dana.user["id"])

        async def seen_after(action) -> list[tuple[int, int]]:
            recorder.seen.clear()
            await action
            await wait_for_notifications(node)
            return sorted(recorder.seen)

        assert await seen_after(dana.logout()) == [(uid, devices[4])]
        current = (await dana.login("dana", PASSWORD, device="d5"))["device_id"]
        assert await seen_after(dana.request("DELETE", f"/api/me/devices/{devices[0]}")) == [(uid, devices[0])]
        change = {"current_password": PASSWORD, "new_password": "another passphrase"}
        others = [(uid, d) for d in sorted(devices[1:4])]
        assert await seen_after(dana.request("POST", "/api/me/password", change)) == others
        with pytest.raises(ClientError):  # not hers: not_found, and no notification
            await seen_after(other.request("DELETE", f"/api/me/devices/{current}"))
        await wait_for_notifications(node)
        assert recorder.seen == []
        await dana.aclose(), await other.aclose()
        node.request_shutdown()


class Counter:
    """Counts the membership changes it is notified of (in its pump: `async def`)."""

    name = "counter"

    def __init__(self) -> None:
        self.seen = 0

    @hookimpl
    async def on_membership_changed(self, chat_id, change):
        self.seen += 1


async def test_a_busy_node_does_not_make_a_plugin_drop_notifications(tmp_path):
    """Notifications arriving a few per scheduler round, while many other tasks are runnable,
    are all handled: a pump takes what is queued in one go instead of one per round."""
    counter = Counter()
    config = make_config(tmp_path, plugins={"event_queue": 32})
    async with trio.open_nursery() as nursery:
        node = await nursery.start(lambda task_status: serve_node(
            config, plugins=[counter], load_entrypoints=False, task_status=task_status))

        async def busy(rounds: int) -> None:
            for _ in range(rounds):
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as load:
            for _ in range(200):
                load.start_soon(busy, 120)
            for _ in range(100):  # 8 notifications per round: 800 in all, 25 times the queue
                for _ in range(8):
                    node.plugins.notify("on_membership_changed", chat_id=1, change={"event": "test"})
                await trio.lowlevel.checkpoint()
        with trio.move_on_after(10):  # every one handled or dropped; the counts below say which
            await wait_for_notifications(node, math.inf)
        assert node.plugins.dropped.get("counter", 0) == 0
        assert counter.seen == 800
        node.request_shutdown()


class Ordered:
    """Plain-function notifications: most return nothing, one returns an awaitable that
    holds the plugin's pump until the test lets it go."""

    name = "ordered"

    def __init__(self) -> None:
        self.log: list[str] = []
        self.release = trio.Event()

    @hookimpl
    def on_membership_changed(self, chat_id, change):
        event = change["event"]
        self.log.append(f"called {event}")
        if event == "slow":
            return self._slow()
        if event == "boom":
            raise RuntimeError("boom")
        return None

    async def _slow(self) -> None:
        await self.release.wait()
        self.log.append("slow done")


async def test_a_plain_function_notification_runs_at_once_and_in_order(tmp_path):
    """docs/plugins.md: a `def` notification is called when it is fired if its plugin's pump
    is idle; an awaitable it returns is awaited in the pump, and what is fired meanwhile
    waits behind it, so the plugin still sees the events in their order."""
    ordered = Ordered()
    async with trio.open_nursery() as nursery:
        node = await nursery.start(lambda task_status: serve_node(
            make_config(tmp_path), plugins=[ordered], load_entrypoints=False, task_status=task_status))
        notify = node.plugins.notify
        notify("on_membership_changed", chat_id=1, change={"event": "first"})
        assert ordered.log == ["called first"]  # at once: no task switch in between
        assert node.plugins.pending() == 0
        notify("on_membership_changed", chat_id=1, change={"event": "boom"})
        assert node.plugins.failures["ordered"] == 1
        notify("on_membership_changed", chat_id=1, change={"event": "slow"})
        notify("on_membership_changed", chat_id=1, change={"event": "after"})
        assert ordered.log == ["called first", "called boom", "called slow"]  # "after" waits
        assert node.plugins.pending() == 2
        ordered.release.set()
        await wait_for_notifications(node)
        assert ordered.log == ["called first", "called boom", "called slow", "slow done", "called after"]
        notify("on_membership_changed", chat_id=1, change={"event": "idle again"})
        assert ordered.log[-1] == "called idle again"
        node.request_shutdown()
