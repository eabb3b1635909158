"""The public plugin API: gates on every way content enters, error codes of a plugin's
own, hook kinds enforced at start-up, plugin-declared hooks, namespaced stores, admin
routes, statistics and snapshots."""

from __future__ import annotations

import subprocess
import sys
import types

import attrs
import orjson
import pytest
import trio
from conftest import PASSWORD, make_config, new_user, running_node, wait_for_notifications

from node import (
    PluginContext,
    PluginError,
    Reject,
    Request,
    Route,
    collector,
    hookimpl,
    notification,
)
from node.app import serve_node
from node.client import ChatClient, ClientError
from node.config import ConfigError
from node.testing import open_test_node


class Gatekeeper:
    """Refuses anything that mentions "forbidden", wherever it enters, and records what it saw."""

    name = "gatekeeper"

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    @hookimpl
    def register_error_codes(self):
        return {"not_here": (422, "this is not allowed on this node")}

    def _refuse(self, hook: str, value: object, text: str) -> None:
        self.seen.append((hook, value))
        if "forbidden" in text:
            raise PluginError("not_here", f"{hook} refused it")

    @hookimpl
    def check_message(self, user_id, chat_id, content):
        self._refuse("check_message", content["kind"], content.get("text") or "")
        if content["kind"] == "delete" and content["target"] == getattr(self, "protected", None):
            raise Reject("that message stays")

    @hookimpl
    def check_registration(self, username, display_name, address):
        self._refuse("check_registration", username, display_name)

    @hookimpl
    def check_join(self, chat_id, user_ids, by):
        self._refuse("check_join", len(user_ids), "forbidden" if len(user_ids) > 3 else "")

    @hookimpl
    def check_upload(self, user_id, mime, size, name):
        self._refuse("check_upload", mime, name or "")


async def test_gates_cover_every_way_content_enters(tmp_path):
    keeper = Gatekeeper()
    async with open_test_node(tmp_path, plugins=[keeper]) as node:
        alice, bob, carol = await new_user(node, "alice"), await new_user(node, "bob"), await new_user(node, "carol")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a:
            sent = await a.send_text(chat["id"], "fine")
            with pytest.raises(ClientError) as send:
                await a.send_text(chat["id"], "forbidden words")
            with pytest.raises(ClientError) as edit:
                await a.edit(chat["id"], sent["id"], "now forbidden")
            keeper.protected = sent["id"]
            with pytest.raises(ClientError) as delete:
                await a.delete(chat["id"], sent["id"])
        assert (send.value.code, send.value.message) == ("not_here", "check_message refused it")
        assert edit.value.code == "not_here" and edit.value.message == "check_message refused it"
        assert delete.value.code == "rejected" and delete.value.message == "that message stays"
        assert [m["text"] for m in await bob.history(chat["id"])] == ["fine"]  # the edit changed nothing

        ctx = node.plugins.contexts["gatekeeper"]
        with pytest.raises(PluginError):  # a plugin's post_message passes the same gate
            await ctx.post_message(int(alice.user["id"]), int(chat["id"]), {"kind": "text", "text": "forbidden"})

        async with ChatClient(node.http_url) as dave:
            with pytest.raises(ClientError) as register:
                await dave.register("dave", PASSWORD, display_name="forbidden name")
            assert (register.value.code, register.value.status) == ("not_here", 422)
        with pytest.raises(ClientError):  # nothing was stored: the name is still free
            await ChatClient(node.http_url).login("dave", PASSWORD)

        with pytest.raises(ClientError) as join:
            await alice.create_group("big", members=[bob.user["id"], carol.user["id"], "1", "2"])
        assert join.value.code == "not_here"
        group = await alice.create_group("small", members=[bob.user["id"]])
        with pytest.raises(ClientError) as add:
            await alice.request("POST", f"/api/chats/{group['id']}/members",
                                json={"users": [carol.user["id"], "5", "6", "7"]})
        assert add.value.code == "not_here"

        kinds = {hook for hook, _ in keeper.seen}
        assert kinds >= {"check_message", "check_registration", "check_join"}
        assert ("check_message", "edit") in keeper.seen and ("check_message", "delete") in keeper.seen
        await alice.aclose(), await bob.aclose(), await carol.aclose()


async def test_an_upload_gate_refuses_and_leaves_nothing(tmp_path):
    import io

    from PIL import Image

    keeper = Gatekeeper()
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, "PNG")
    async with open_test_node(tmp_path, plugins=[keeper]) as node:
        alice = await new_user(node, "alice")
        with pytest.raises(ClientError) as refused:
            await alice.upload(buffer.getvalue(), name="forbidden.png")
        assert (refused.value.code, refused.value.status) == ("not_here", 422)
        assert ("check_upload", "image/png") in keeper.seen
        assert (await alice.upload(buffer.getvalue(), name="fine.png"))["mime"] == "image/png"
        assert await node.plugins.contexts["media"].store.table("items").count() == 1
        await alice.aclose()


async def test_an_undeclared_error_code_is_answered_as_internal(tmp_path):
    class Sloppy:
        name = "sloppy"

        @hookimpl
        def check_message(self, content):
            raise PluginError("made_up_code", "oops")

    async with open_test_node(tmp_path, plugins=[Sloppy()]) as node:
        alice, _bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a:
            with pytest.raises(ClientError) as info:
                await a.send_text(chat["id"], "hi")
        assert info.value.code == "internal"
        await alice.aclose(), await _bob.aclose()


class Meddler:
    """Tries to change a message in its gates instead of returning a new one."""

    name = "meddler"

    def __init__(self) -> None:
        self.refused: list[str] = []

    def _meddle(self, hook: str, content) -> None:
        try:
            content["text"] = "changed by " + hook
        except TypeError:
            self.refused.append(hook)
        with pytest.raises(AttributeError):
            content["mentions"].append("1")  # a tuple

    @hookimpl
    def check_message(self, content):
        self._meddle("check_message", content)

    @hookimpl
    def prepare_message(self, content):
        self._meddle("prepare_message", content)
        return content  # the content as it is: kept


async def test_gates_see_the_content_read_only(tmp_path):
    """check_message cannot change what is stored behind the other gates' backs; only
    prepare_message's return value replaces the content."""
    meddler = Meddler()
    async with open_test_node(tmp_path, plugins=[meddler]) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        group = await alice.create_group("g", members=[bob.user["id"]])
        async with alice.connect() as a:
            await a.send_text(group["id"], "as written", mentions=[bob.user["id"]])
        assert meddler.refused == ["check_message", "prepare_message"]
        [message] = [m for m in await bob.history(group["id"]) if m["kind"] == "text"]
        assert (message["text"], message["mentions"]) == ("as written", [bob.user["id"]])
        await alice.aclose(), await bob.aclose()


class Faulty:
    """A chat-socket event type and a route whose handlers refuse, or fail with a bug."""

    name = "faulty"

    @hookimpl
    def register_frame_types(self):
        async def poke(client, event):
            if event.get("how") == "reject":
                raise Reject("not now")
            if event.get("how") == "bug":
                raise RuntimeError("a bug in the plugin")
            client.send({"type": "poked"})

        return {"poke": poke}

    @hookimpl
    def register_routes(self):
        async def poke(request: Request, how: str):
            if how == "reject":
                raise Reject("not now")
            if how == "bug":
                raise RuntimeError("a bug in the plugin")
            if how == "busy":
                raise PluginError("rate_limited", "poked too often", retry_after=2.5)
            return {"poked": True}

        return [Route("POST", "/api/faulty/<how>", poke)]


async def test_a_failing_handler_answers_with_a_code_and_keeps_the_connection(tmp_path, caplog):
    """Reject in a plugin's event handler or route is `rejected`; any other exception is
    logged with the plugin's name and answered `internal`; the chat socket stays open."""
    async with open_test_node(tmp_path, plugins=[Faulty()]) as node:
        alice = await new_user(node, "alice")
        async with alice.connect() as a:
            await a.wait_for("synced")
            for how, code in (("reject", "rejected"), ("bug", "internal")):
                await a.send_events({"type": "poke", "how": how})
                assert (await a.wait_for("error"))["code"] == code
            await a.send_events({"type": "poke"})
            await a.wait_for("poked")  # the same connection still serves
        for how, code, status in (("reject", "rejected", 403), ("bug", "internal", 500)):
            with pytest.raises(ClientError) as refused:
                await alice.request("POST", f"/api/faulty/{how}")
            assert (refused.value.code, refused.value.status) == (code, status)
        assert await alice.request("POST", "/api/faulty/fine") == {"poked": True}
        busy = await alice._http.post("/api/faulty/busy", headers={"Authorization": f"Bearer {alice.token}"})
        assert (busy.status_code, busy.headers["Retry-After"]) == (429, "3")  # whole seconds, rounded up
        assert node.plugins.statistics()["failures"]["faulty"] == 2
        assert "plugin faulty failed in its handler of 'poke' events" in caplog.text
        assert "plugin faulty failed in its route POST /api/faulty/<how>" in caplog.text
        await alice.aclose()


@pytest.mark.parametrize("plugin, message", [
    (types.SimpleNamespace(name="w1", register_error_codes=hookimpl(lambda: {"not_found": (404, "x")})),
     "a core code"),
])
async def test_error_codes_must_not_clash(tmp_path, plugin, message):
    with pytest.raises(ConfigError, match=message):
        await serve_node(make_config(tmp_path), plugins=[plugin], load_entrypoints=False)


async def test_two_plugins_cannot_declare_the_same_code(tmp_path):
    class A:
        name = "a"

        @hookimpl
        def register_error_codes(self):
            return {"mine": (400, "a's")}

    class B(A):
        name = "b"

    with pytest.raises(ConfigError, match="both declare the error code 'mine'"):
        await serve_node(make_config(tmp_path), plugins=[A(), B()], load_entrypoints=False)


async def test_hook_wrappers_are_refused_with_a_clear_message(tmp_path):
    class Wrapper:
        name = "wrapper"

        @hookimpl(wrapper=True)
        def check_message(self, content):
            return (yield)

    with pytest.raises(ConfigError, match="hook wrapper.*drop wrapper=True"):
        await serve_node(make_config(tmp_path), plugins=[Wrapper()], load_entrypoints=False)


async def test_an_async_collector_is_refused(tmp_path):
    class AsyncRoutes:
        name = "async_routes"

        @hookimpl
        async def register_routes(self, ctx):
            return []

    with pytest.raises(ConfigError, match="collector.*must not be async"):
        await serve_node(make_config(tmp_path), plugins=[AsyncRoutes()], load_entrypoints=False)


class BellHooks:
    """Hooks a plugin declares: a firstresult collector and a notification."""

    @staticmethod
    @collector(firstresult=True)
    def pick_bell(ctx) -> str | None:
        """Collector."""

    @staticmethod
    @notification
    def on_bell(ctx, rung: int) -> None:
        """Notification."""


class Bell:
    name = "bell"

    @hookimpl
    def register_hookspecs(self):
        return BellHooks

    @hookimpl
    async def startup(self, ctx: PluginContext, nursery):
        self.ctx = ctx


class Listener:
    name = "listener"

    def __init__(self) -> None:
        self.rung: list[int] = []

    @hookimpl
    def on_bell(self, rung):
        self.rung.append(rung)

    @hookimpl
    def pick_bell(self):
        return "brass"

    @hookimpl
    async def startup(self, ctx: PluginContext, nursery):
        self.ctx = ctx


async def test_plugins_declare_and_fire_their_own_hooks_and_only_those(tmp_path):
    bell, listener = Bell(), Listener()
    async with open_test_node(tmp_path, plugins=[bell, listener]) as node:
        bell.ctx.notify("on_bell", rung=3)
        assert bell.ctx.collect("pick_bell") == ["brass"]
        await wait_for_notifications(node)
        assert listener.rung == [3]
        with pytest.raises(PermissionError):
            listener.ctx.notify("on_bell", rung=4)  # not its hook
        with pytest.raises(PermissionError):
            bell.ctx.notify("on_message_stored", message=None)  # only the core fires core hooks


async def test_firstresult_is_refused_on_a_notification(tmp_path):
    class Bad:
        @staticmethod
        @notification
        def on_thing(ctx) -> None:
            """Notification."""

    Bad.on_thing.chatnode_spec["firstresult"] = True

    class Declarer:
        name = "declarer"

        @hookimpl
        def register_hookspecs(self):
            return Bad

    with pytest.raises(ConfigError, match="firstresult is supported on collector hooks only"):
        await serve_node(make_config(tmp_path), plugins=[Declarer()], load_entrypoints=False)


async def test_an_impl_of_a_declared_hook_with_an_unknown_argument_is_a_config_error(tmp_path):
    class Deaf:
        name = "deaf"

        @hookimpl
        def on_bell(self, volume):  # BellHooks.on_bell has no `volume`
            pass

    with pytest.raises(ConfigError, match="deaf.*on_bell"):
        await serve_node(make_config(tmp_path), plugins=[Bell(), Deaf()], load_entrypoints=False)


async def test_stores_are_namespaced_per_plugin(tmp_path):
    class One:
        name = "one"

        @hookimpl
        async def startup(self, ctx, nursery):
            self.ctx = ctx

    class Two(One):
        name = "two"

    one, two = One(), Two()
    async with open_test_node(tmp_path, plugins=[one, two]):
        batch = one.ctx.store.batch()
        batch.put("notes", b"k", b"one's")
        await one.ctx.store.write(batch)
        assert await one.ctx.store.table("notes").get(b"k") == b"one's"
        assert await two.ctx.store.table("notes").get(b"k") is None
        with pytest.raises(ValueError):
            one.ctx.store.table("../two/notes")


async def test_a_commit_hook_rides_along_with_the_next_commit(tmp_path):
    class Lazy:
        name = "lazy"

        @hookimpl
        async def startup(self, ctx, nursery):
            self.ctx = ctx
            self.pending = [b"a", b"b"]

            def flush(batch):
                for key in self.pending:
                    batch.put("seen", key, b"1")
                self.pending.clear()

            ctx.store.on_commit(flush)

    lazy = Lazy()
    async with open_test_node(tmp_path, plugins=[lazy]) as node:
        await new_user(node, "alice")  # commits: the hook's writes join that transaction
        assert await lazy.ctx.store.table("seen").count() == 2


async def test_admin_routes_need_the_admin_token_and_stats_reach_metrics(tmp_path):
    class Reporter:
        name = "reporter"

        @hookimpl
        def register_routes(self, ctx):
            async def secret(request: Request):
                ctx.count("asked")
                return {"secret": 42}

            async def public(request: Request):
                return {"user": await request.user_id()}

            return [Route("GET", "/api/reporter/secret", secret, admin=True),
                    Route("GET", "/api/reporter/me", public)]

    token = "t" * 32
    config = make_config(tmp_path, admin={"token": token})
    async with running_node(config, plugins=[Reporter()]) as node:
        alice = await new_user(node, "alice")
        with pytest.raises(ClientError) as refused:
            await alice.request("GET", "/api/reporter/secret")
        assert refused.value.status == 401
        assert await alice.request("GET", "/api/reporter/me") == {"user": int(alice.user["id"])}
        async with ChatClient(node.http_url, token=token) as admin:
            assert await admin.request("GET", "/api/reporter/secret") == {"secret": 42}
            metrics = await admin._http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert "chatnode_plugins_reporter_asked 1.0" in metrics.text
        await alice.aclose()


async def test_snapshots_are_read_only(tmp_path):
    class Peek:
        name = "peek"

        @hookimpl
        async def startup(self, ctx, nursery):
            self.ctx = ctx

    peek = Peek()
    async with open_test_node(tmp_path, plugins=[peek]) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        snapshot = await peek.ctx.chat(int(chat["id"]))
        assert snapshot.kind == "direct" and snapshot.member_ids == {int(alice.user["id"]), int(bob.user["id"])}
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            snapshot.kind = "group"
        user = await peek.ctx.user(int(alice.user["id"]))
        with pytest.raises(TypeError):
            user.settings["read_receipts"] = False  # a read-only mapping
        assert (await node.chats.load(int(chat["id"]))).kind == "direct"
        await alice.aclose(), await bob.aclose()


async def test_what_is_nested_in_a_snapshot_is_read_only_too(tmp_path):
    """A message's record shares nothing with the core: a plugin changing the media in it
    would otherwise change the chat's last message in everyone's chat list."""

    class Scribbler:
        name = "scribbler"

        def __init__(self):
            self.refused = []

        @hookimpl
        def on_message_stored(self, message):
            if message.kind == "file":
                for mapping, change in ((message.record["media"], "set"), (message.record["media"], "update"),
                                        (message.media, "set")):
                    try:
                        if change == "set":
                            mapping["name"] = "scribbled"
                        else:
                            mapping.update(name="scribbled")
                    except (TypeError, AttributeError):  # AttributeError: a mappingproxy has no update
                        self.refused.append(True)
                self.forwarded = orjson.loads(orjson.dumps(dict(message.record)))  # still plain JSON

    scribbler = Scribbler()
    async with open_test_node(tmp_path, plugins=[scribbler]) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        chat = await alice.open_direct(username="bob")
        media = await alice.upload(b"plain words\n", name="notes.txt")
        async with alice.connect() as a:
            await a.send_text(chat["id"], "notes", kind="file", media=media["id"])
        await wait_for_notifications(node)
        assert scribbler.refused == [True, True, True]
        assert scribbler.forwarded["media"]["name"] == "notes.txt"
        [listed] = await bob.chats()
        assert listed["last_message"]["media"]["name"] == "notes.txt"
        await alice.aclose(), await bob.aclose()


def test_the_plugins_command_lists_plugins_with_versions(tmp_path):
    (tmp_path / "config.toml").write_text("[plugins.lastseen]\ngrace = 1.0\n")
    out = subprocess.run([sys.executable, "-m", "node", "plugins", "-c", str(tmp_path / "config.toml"), "--json"],
                         capture_output=True, text=True, check=True)
    import json

    listed = {p["name"]: p for p in json.loads(out.stdout)}
    assert {"media", "push", "receipts", "lastseen", "analytics"} <= set(listed)
    assert listed["receipts"]["builtin"] and listed["receipts"]["version"]
    assert "on_read" in listed["receipts"]["hooks"]


def test_check_config_validates_plugin_sections(tmp_path):
    (tmp_path / "config.toml").write_text('[plugins.lastseen]\ndefault_visibility = "friends"\n')
    out = subprocess.run([sys.executable, "-m", "node", "check-config", "-c", str(tmp_path / "config.toml")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "plugins.lastseen.default_visibility" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


async def test_wait_for_notifications_waits_for_slow_plugins(tmp_path):
    class Slow:
        name = "slow"

        def __init__(self):
            self.done = 0

        @hookimpl
        async def on_user_online(self, user_id):
            await trio.sleep(0.2)  # a slow plugin (a network call): the helper must wait for it
            self.done += 1

    slow = Slow()
    async with open_test_node(tmp_path, plugins=[slow]) as node:
        alice = await new_user(node, "alice")
        async with alice.connect() as a:
            await a.synced.wait()
        await wait_for_notifications(node)
        assert slow.done == 1
        await alice.aclose()
