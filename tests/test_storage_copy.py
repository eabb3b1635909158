"""`chatnode storage copy` and `verify` (node/storage/copy.py), end to end.

Real data made by a real node (accounts, 1-1 and group chats, edits, deletions, a
disappearing message, idempotency records, a block, a photo, last-seen times), copied by
the real command in a child process between LMDB and a real PostgreSQL, then served by a
node started on the copy. Interruptions are real too: the copy is killed (SIGKILL) at a
known page and run again.
"""

from __future__ import annotations

import io
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import lmdb
import orjson
import psycopg
import pytest
import trio
from conftest import PASSWORD, make_config, new_user, running_node
from PIL import Image

from node.client import ChatClient, ClientError
from node.storage import EXPORT_TABLES
from node.storage.copy import MARKER
from node.storage.lmdb_engine import open_lmdb
from node.storage.postgres import open_postgres
from node.testing import wait_until

pytestmark = pytest.mark.engine("lmdb")  # each test chooses the engines of its source and target itself

HOUR_MS = 3_600_000

# -- the command and the places ------------------------------------------------------------


@attrs.frozen
class Result:
    code: int
    out: str
    err: str


async def chatnode(*args: str | Path, cwd: Path | None = None) -> Result:
    """Run `chatnode ...` in a child process, as an operator would."""
    with trio.fail_after(120):
        done = await trio.run_process([sys.executable, "-m", "node", *map(str, args)], cwd=cwd, check=False,
                                      capture_stdout=True, capture_stderr=True)
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


@attrs.frozen
class Place:
    """A node's home: its folder (config.toml, data/) and its [storage] section."""

    root: Path
    storage: dict[str, str]

    @property
    def config_path(self) -> Path:
        lines = ["[node]", 'data_dir = "data"', "[storage]", *(f'{k} = "{v}"' for k, v in self.storage.items())]
        path = self.root / "config.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def target(self) -> str:
        """How `--to` names this place's storage."""
        if self.storage["engine"] == "lmdb":
            return f"lmdb:{self.data}"
        params = dict(part.split("=", 1) for part in self.storage["dsn"].split())
        return f"postgresql://{params['user']}@{params['host']}:{params['port']}/{params['dbname']}"

    def node_config(self) -> Any:
        return make_config(self.root, storage=self.storage)


@pytest.fixture
def place(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """`place(name, engine)`: a new, empty home for a node on that engine."""

    def make(name: str, engine: str) -> Place:
        root = tmp_path / name
        root.mkdir()
        if engine == "lmdb":
            return Place(root, {"engine": "lmdb"})
        return Place(root, {"engine": "postgresql", "dsn": request.getfixturevalue("pg_server").create_database()})

    return make


def copy_files(source: Place, target: Place) -> None:
    """What the operator copies beside the database (docs/operations.md): media and push keys."""
    for folder in ("media", "push"):
        if (source.data / folder).exists():
            shutil.copytree(source.data / folder, target.data / folder, dirs_exist_ok=True)


# -- a node's data, and what its users see of it ---------------------------------------------


@attrs.define
class World:
    """What `populate` made: users' ids and tokens, and what a check needs later."""

    ids: dict[str, str] = attrs.Factory(dict)
    tokens: dict[str, str] = attrs.Factory(dict)
    direct: str = ""
    group: str = ""
    media: str = ""
    retry: dict[str, Any] = attrs.Factory(dict)  # a send with a client_msg_id, and its ack
    expiring_id: str = ""


def photo() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 40, 90)).save(out, "PNG")
    return out.getvalue()


async def populate(place: Place, messages: int = 30) -> World:
    """A real node makes a bit of everything, then stops."""
    world = World()
    async with running_node(place.node_config()) as node:
        users = {name: await new_user(node, name) for name in ("alice", "bob", "carol", "dave")}
        try:
            for name, client in users.items():
                world.ids[name], world.tokens[name] = client.user["id"], client.token
            alice, bob, carol = users["alice"], users["bob"], users["carol"]
            world.direct = (await alice.open_direct(username="bob"))["id"]
            world.group = (await alice.create_group("trip", usernames=["bob", "carol"]))["id"]
            world.media = (await alice.upload(photo(), "pink.png"))["id"]
            async with alice.connect() as a, bob.connect() as b:
                acks = [await a.send_text(world.direct, f"hello {i}") for i in range(messages)]
                await a.edit(world.direct, acks[3]["id"], "hello 3, edited")
                await a.delete(world.direct, acks[5]["id"])
                world.expiring_id = (await a.send_text(world.direct, "gone in an hour", ttl=3600))["id"]
                retry = await a.send_text(world.direct, "sent once", client_msg_id="retry-1")
                world.retry = {"chat": world.direct, "client_msg_id": "retry-1", "ack": retry}
                await a.send_many([{"chat": world.direct, "kind": "image", "media": world.media, "text": "pink"}])
                await b.send_text(world.group, "in the group")
                await b.read(world.direct, acks[10]["seq"])
            await alice.update_chat(world.group, title="trip 2026")
            await alice.add_members(world.group, [world.ids["dave"]])
            await alice.remove_member(world.group, world.ids["carol"])
            await carol.block(world.ids["dave"])
            await bob.settings(last_seen="contacts")
        finally:
            for client in users.values():
                await client.aclose()
    return world


async def seen(url: str, world: World) -> dict[str, Any]:
    """Everything each user sees through the API (with the tokens they had), as data."""
    out: dict[str, Any] = {}
    for name, token in world.tokens.items():
        async with ChatClient(url, token=token) as client:
            me = await client.me()
            chats = await client.chats()
            # last_used is noted by this very request, and a token's expiry follows its last use
            devices = [{k: v for k, v in device.items() if k not in ("last_used", "expires")}
                       for device in (await client.request("GET", "/api/me/devices"))["devices"]]
            view: dict[str, Any] = {"me": me, "devices": devices, "chats": chats,
                                    "hidden": await client.chats(hidden=True)}
            for chat in chats:
                view[chat["id"]] = {"chat": await client.chat(chat["id"]),
                                    "history": await client.history(chat["id"], limit=100)}
                if chat["kind"] == "group":
                    try:
                        view[chat["id"]]["members"] = await client.members(chat["id"])
                    except ClientError as exc:  # a former member (carol) keeps the chat but not its members
                        view[chat["id"]]["members"] = exc.code
            view["presence"] = {other: await client.presence(world.ids[other]) for other in world.ids if other != name}
            view["blocks"] = (await client.request("GET", "/api/blocks"))["users"]
            if name in ("alice", "bob"):
                view["media"] = await client.media_info(world.media)
                view["photo"] = len(await client.download(world.media))
            out[name] = view
    return out


async def served(place: Place, world: World) -> dict[str, Any]:
    async with running_node(place.node_config()) as node:
        return await seen(node.http_url, world)


async def use(place: Place, world: World) -> dict[str, Any]:
    """A node on `place` serves the same history; logins, old tokens, an idempotent
    retry and new messages work. Returns what users see afterwards."""
    async with running_node(place.node_config()) as node:
        async with ChatClient(node.http_url) as alice:
            await alice.login("alice", PASSWORD)
            async with alice.connect() as a:
                again = await a.send_text(world.retry["chat"], "sent once", client_msg_id=world.retry["client_msg_id"])
                assert (again["id"], again["seq"]) == (world.retry["ack"]["id"], world.retry["ack"]["seq"])
                new = await a.send_text(world.direct, "after the move")
                assert int(new["id"]) > int(world.retry["ack"]["id"]) and new["seq"] > world.retry["ack"]["seq"]
        async with ChatClient(node.http_url, token=world.tokens["bob"]) as bob:
            assert (await bob.me())["user"]["username"] == "bob"  # a token from before the move
        async with ChatClient(node.http_url) as stranger:
            with pytest.raises(ClientError) as refused:
                await stranger.login("alice", "not the password")
            assert refused.value.status == 401
        return await seen(node.http_url, world)


async def expiry_index(place: Place) -> list[int]:
    """Message ids the engine's expiry index lists as due within two hours."""
    now = int(time.time() * 1000)
    if place.storage["engine"] == "lmdb":
        async with open_lmdb(place.data / "db") as storage:
            return [due[2] for due in await storage.due_expiry(now + 2 * HOUR_MS, 100)]
    async with open_postgres(place.storage["dsn"]) as storage:
        return [due[2] for due in await storage.due_expiry(now + 2 * HOUR_MS, 100)]


async def namespaces(place: Place) -> set[str]:
    """The plugin namespaces stored (read through the engine's export)."""
    opener = (open_lmdb(place.data / "db") if place.storage["engine"] == "lmdb"
              else open_postgres(place.storage["dsn"]))
    async with opener as storage:
        return {row[0] async for page in storage.export("kv") for row in page}


def flat(value: Any, path: str = "") -> dict[str, Any]:
    """{"alice.chats[0].last_seq": 5, ...}: nested data as paths, to name what differs."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flat(item, f"{path}.{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flat(item, f"{path}[{i}]").items()} or {path: []}
    return {path: value}


def assert_same(seen_now: dict[str, Any], expected: dict[str, Any]) -> None:
    now, then = flat(seen_now), flat(expected)
    diff = [f"{key}: {then.get(key, '(absent)')!r} -> {now.get(key, '(absent)')!r}"
            for key in sorted(now.keys() | then.keys()) if now.get(key, "(absent)") != then.get(key, "(absent)")]
    assert not diff, "what users see changed:\n" + "\n".join(diff[:20])


def assert_ok(result: Result) -> None:
    assert result.code == 0, f"exit {result.code}\n{result.out}\n{result.err}"
    assert "OK: source and target hold the same" in result.out, result.out


# -- copies ----------------------------------------------------------------------------------


async def test_lmdb_to_postgresql_and_back(place: Any) -> None:
    one = place("one", "lmdb")
    world = await populate(one)
    before = await served(one, world)
    history = before["alice"][world.direct]["history"]  # what there is to copy
    assert {"text", "deleted", "image"} <= {m["kind"] for m in history}
    assert any(m.get("edited") for m in history) and any(m.get("expires_at") for m in history)
    assert [user["username"] for user in before["carol"]["blocks"]] == ["dave"]
    assert {"media/items", "lastseen/times"} <= await namespaces(one)

    cluster = place("cluster", "postgresql")
    result = await chatnode("storage", "copy", "--config", one.config_path, "--to", cluster.target)
    assert_ok(result)
    for table in EXPORT_TABLES:
        assert f"copy {table}:" in result.err and f"verify {table}:" in result.err  # progress, per table
    copy_files(one, cluster)
    assert_same(await served(cluster, world), before)
    assert int(world.expiring_id) in await expiry_index(cluster)
    after = await use(cluster, world)
    assert after != before  # it wrote: a login, a new message

    back = place("back", "lmdb")
    assert_ok(await chatnode("storage", "copy", "--config", cluster.config_path, "--to", back.target))
    copy_files(cluster, back)
    verified = await chatnode("storage", "verify", "--config", cluster.config_path, "--against", back.target)
    assert verified.code == 0 and "OK" in verified.out, verified.out
    assert_same(await served(back, world), after)
    assert int(world.expiring_id) in await expiry_index(back)
    await use(back, world)


@pytest.mark.parametrize("source_engine, target_engine", [("lmdb", "postgresql"), ("postgresql", "lmdb")])
async def test_an_interrupted_copy_continues_when_run_again(place: Any, source_engine: str,
                                                            target_engine: str) -> None:
    source, target = place("source", source_engine), place("target", target_engine)
    world = await populate(source, messages=40)
    before = await served(source, world)

    killed = await chatnode("storage", "copy", "--config", source.config_path, "--to", target.target,
                            "--page", "5", "--kill-after-pages", "9")
    assert killed.code == -signal.SIGKILL, killed
    assert "copy messages:" in killed.err and "verify" not in killed.err  # it died while copying messages
    partial = await chatnode("storage", "verify", "--config", source.config_path, "--against", target.target)
    assert partial.code == 1 and "MISMATCH" in partial.out and "only in the source" in partial.out, partial.out

    rerun = await chatnode("storage", "copy", "--config", source.config_path, "--to", target.target, "--page", "5")
    assert_ok(rerun)
    assert "unfinished copy of this source: continuing" in rerun.out
    again = await chatnode("storage", "copy", "--config", source.config_path, "--to", target.target)
    assert_ok(again)
    assert "finished, verified copy of this source: verifying it again" in again.out
    copy_files(source, target)
    assert_same(await served(target, world), before)


def tamper_lmdb(place: Place, chat_id: int, seq: int) -> None:
    env = lmdb.open(str(place.data / "db"), max_dbs=64)
    try:
        log = env.open_db(b"log")
        key = chat_id.to_bytes(8, "big") + seq.to_bytes(8, "big")
        with env.begin(write=True) as txn:
            record = orjson.loads(txn.get(key, db=log))
            txn.put(key, orjson.dumps({**record, "text": "forged"}), db=log)
    finally:
        env.close()


def tamper_postgres(place: Place, chat_id: int, seq: int) -> None:
    with psycopg.connect(place.storage["dsn"], autocommit=True) as conn:
        conn.execute("UPDATE messages SET record = jsonb_set(record::jsonb, '{text}', '\"forged\"')::json "
                     "WHERE chat_id = %s AND seq = %s", (chat_id, seq))


@pytest.mark.parametrize("source_engine, target_engine", [("lmdb", "postgresql"), ("postgresql", "lmdb")])
async def test_a_tampered_target_fails_verification(place: Any, source_engine: str, target_engine: str) -> None:
    source, target = place("source", source_engine), place("target", target_engine)
    world = await populate(source)
    assert_ok(await chatnode("storage", "copy", "--config", source.config_path, "--to", target.target))

    (tamper_lmdb if target_engine == "lmdb" else tamper_postgres)(target, int(world.direct), 2)
    for command in (("verify", "--against"), ("copy", "--to")):  # a verified copy is only verified again
        result = await chatnode("storage", command[0], "--config", source.config_path, command[1], target.target)
        assert result.code == 1, result
        assert f"different: chat_id={int(world.direct)} seq=2" in result.out, result.out
        assert "MISMATCH: messages differ" in result.out
        assert [line.split()[0] for line in result.out.splitlines() if line.endswith("DIFFERENT")] == ["messages"]


# -- refusals ----------------------------------------------------------------------------------


async def test_a_data_dir_a_running_node_holds_is_refused(place: Any, tmp_path: Path) -> None:
    source, target, mirror = place("source", "lmdb"), place("target", "postgresql"), place("mirror", "lmdb")
    await populate(source)
    await populate(mirror)
    config = source.config_path
    config.write_text(config.read_text() + "[http]\nport = 0\n[websocket]\nport = 0\n")
    node = await trio.lowlevel.open_process([sys.executable, "-m", "node", "serve", "--config", str(config)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        def holds_the_lock() -> bool:  # the node holds its data dir's lock once it says so
            assert node.poll() is None, "the node did not start"
            return _lock_holder(source.data) == str(node.pid)

        await wait_until(holds_the_lock, 30, interval=0.05)
        refused = await chatnode("storage", "copy", "--config", config, "--to", target.target)
        assert refused.code == 2, refused
        assert f"is in use by a running node or copy (pid {node.pid})" in refused.err
        refused = await chatnode("storage", "copy", "--config", mirror.config_path, "--to", f"lmdb:{source.data}")
        assert refused.code == 2 and "in use by a running node" in refused.err, refused
    finally:
        node.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            await node.wait()
    assert_ok(await chatnode("storage", "copy", "--config", config, "--to", target.target))


def _lock_holder(data_dir: Path) -> str:
    try:
        return (data_dir / "node.lock").read_text().strip()
    except FileNotFoundError:
        return ""


async def test_a_database_a_node_is_connected_to_is_refused(place: Any) -> None:
    source, target = place("source", "postgresql"), place("target", "lmdb")
    await populate(source)
    async with running_node(source.node_config()):
        refused = await chatnode("storage", "copy", "--config", source.config_path, "--to", target.target)
        assert refused.code == 2 and "chatnode session(s) are connected" in refused.err, refused
        reverse = place("other", "lmdb")
        await populate(reverse)
        refused = await chatnode("storage", "copy", "--config", reverse.config_path, "--to", source.target)
        assert refused.code == 2 and "chatnode session(s) are connected" in refused.err, refused
    assert not (target.data / "db").exists()  # nothing was made
    assert_ok(await chatnode("storage", "copy", "--config", source.config_path, "--to", target.target))


async def test_a_target_holding_other_data_is_refused_and_left_alone(place: Any) -> None:
    first, second = place("first", "lmdb"), place("second", "lmdb")
    await populate(first)
    await populate(second)
    target = place("target", "postgresql")
    assert_ok(await chatnode("storage", "copy", "--config", first.config_path, "--to", target.target))

    refused = await chatnode("storage", "copy", "--config", second.config_path, "--to", target.target)
    assert refused.code == 2, refused
    assert f"is a copy of lmdb:{first.data / 'db'}, not of lmdb:{second.data / 'db'}" in refused.err
    assert "nothing was written" in refused.err
    still = await chatnode("storage", "verify", "--config", first.config_path, "--against", target.target)
    assert still.code == 0, still.out

    used = place("used", "postgresql")  # a database a node ran on: data, and no copy marker
    await populate(used)
    refused = await chatnode("storage", "copy", "--config", first.config_path, "--to", used.target)
    assert refused.code == 2 and "already holds data (" in refused.err and "users" in refused.err, refused
    refused = await chatnode("storage", "copy", "--config", used.config_path, "--to", first.target)
    assert refused.code == 2 and "already holds data" in refused.err, refused
    async with open_lmdb(first.data / "db") as storage:
        assert await storage.get_meta(MARKER) is None  # the refused copy wrote nothing


async def test_what_cannot_be_copied_is_refused_with_one_line(place: Any, tmp_path: Path) -> None:
    source = place("source", "lmdb")
    empty = place("empty", "lmdb")
    await populate(source)
    cases = {
        "not a place for data": ("copy", "--config", source.config_path, "--to", "/tmp/somewhere"),
        "the source and the target are the same": ("copy", "--config", source.config_path, "--to", source.target),
        "there is no LMDB database in": ("copy", "--config", empty.config_path, "--to", f"lmdb:{tmp_path / 'x'}"),
        "not a valid PostgreSQL DSN": ("copy", "--config", source.config_path, "--to", "postgresql:nonsense"),
        "--page must be at least 1": ("copy", "--config", source.config_path, "--to", "lmdb:/tmp/x", "--page", "0"),
    }
    for expected, args in cases.items():
        result = await chatnode("storage", *args)
        assert result.code == 2, (expected, result)
        assert expected in result.err and len(result.err.strip().splitlines()) == 1, result.err
        assert "Traceback" not in result.err
    assert not (tmp_path / "x").exists()


async def test_the_source_keeps_working_after_a_copy(place: Any) -> None:
    """Copying reads the source and writes nothing a node would see."""
    source, target = place("source", "lmdb"), place("target", "postgresql")
    world = await populate(source)
    before = await served(source, world)
    assert_ok(await chatnode("storage", "copy", "--config", source.config_path, "--to", target.target))
    assert_same(await served(source, world), before)
