"""The node's log: one line per event with a level, text or JSON lines with stable fields,
request ids on HTTP, an access line per request, and never a token, a password or the
text of a message, even at DEBUG. The node runs as `chatnode serve` (a subprocess), so
what is checked is exactly what an operator's log gets."""

from __future__ import annotations

import io
import json
import logging
import re
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest
import trio
from conftest import make_config
from ports import free_port
from trio_websocket import open_websocket_url

from node import Route, hookimpl
from node.app import serve_node
from node.client import ChatClient, ClientError
from node.core.operations import PostMessage, SendMessage
from node.logs import JsonFormatter, RequestContext, TextFormatter

FIELDS = {"ts", "level", "logger", "msg"}
LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")



def secret(kind: str) -> str:
    """A value that cannot turn up in a log by chance (letters only: no id or hex has it)."""
    return kind + "".join(secrets.choice("ghjkmnpqrstvwxyzGHJKMNPQRSTVWXYZ") for _ in range(16))


class LoggedNode:
    """`chatnode serve` at DEBUG on free loopback ports, its stderr kept in a file."""

    def __init__(self, folder: Path, log_format: str) -> None:
        self.http, self.ws = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http}"
        self.config = folder / "config.toml"
        self.config.write_text(f"""
[node]
data_dir = "data"
[http]
port = {self.http}
[websocket]
port = {self.ws}
[accounts]
argon2_time_cost = 1
argon2_memory_kib = 64
min_password_length = 24
[limits]
max_message_bytes = 64
[log]
level = "DEBUG"
format = "{log_format}"
""")
        self.stderr = folder / "stderr.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> LoggedNode:
        with self.stderr.open("wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "node", "serve", "--config", str(self.config)],
                                         stdout=subprocess.PIPE, stderr=err, text=True)
        line = self.proc.stdout.readline()
        assert "is running" in line, self.stderr.read_text()
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)

    def lines(self) -> list[str]:
        return self.stderr.read_text().splitlines()


async def exercise(node: LoggedNode, said: dict[str, str]) -> dict[str, str]:
    """Register, log in, chat, upload, change a password and make errors; returns the
    X-Request-Id of some responses by what they were."""
    ids = {}
    alice_pw, bob_pw, new_pw = said["alice_pw"], said["bob_pw"], said["new_pw"]
    async with ChatClient(node.url) as alice, ChatClient(node.url) as bob:
        await alice.register("alice", alice_pw)
        await bob.register("bob", bob_pw)
        said["alice_token"] = (await alice.login("alice", alice_pw))["token"]
        said["bob_token"] = (await bob.login("bob", bob_pw))["token"]
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as a, bob.connect() as b:
            await b.synced.wait()
            ack = await a.send_text(chat["id"], said["text"])
            assert (await b.wait_for("message"))["text"] == said["text"]
            await a.edit(chat["id"], ack["id"], said["edited"])
            media = await alice.upload(photo(), name="holiday.jpg")
            await a.send_text(chat["id"], said["caption"], kind="image", media=media["id"])
            with pytest.raises(ClientError):  # too large: the error must not quote it
                await a.send_text(chat["id"], said["too_long"])
            signed = await alice.signed_urls(media["id"])
            assert (await bob._http.get(signed["url"])).status_code == 200  # ?exp=&sig= in the query
        await alice.request("POST", "/api/me/password", {"current_password": alice_pw, "new_password": new_pw})
        with pytest.raises(ClientError):
            await bob.login("bob", said["wrong_pw"])
        with pytest.raises(ClientError):
            await bob.register("carol", said["short_pw"])  # too short
        async with httpx.AsyncClient(base_url=node.url) as raw:
            cut = b'{"username": "bob", "password": "' + said["cut_pw"].encode()  # not valid JSON
            bad_json = await raw.post("/api/login", content=cut)
            assert bad_json.status_code == 400
            forged = await raw.get("/api/me", headers={"Authorization": f"Bearer {said['forged_token']}"})
            assert forged.status_code == 401
            ids["forged"] = forged.headers["x-request-id"]
            query = await raw.get(f"/api/info?token={said['query_token']}", headers={"X-Request-Id": "proxy-42:a.b"})
            ids["sane"] = query.headers["x-request-id"]
            insane = await raw.get("/healthz", headers={"X-Request-Id": "no spaces <allowed>"})
            ids["insane"] = insane.headers["x-request-id"]
        async with open_websocket_url(f"ws://127.0.0.1:{node.ws}/ws") as ws:  # a forged token on the chat socket
            await ws.send_message(orjson.dumps({"type": "hello", "token": said["forged_ws_token"]}).decode())
            assert "unauthorized" in await ws.get_message()
        await alice.logout()
    return ids


def photo() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 90, 40)).save(out, "JPEG")
    return out.getvalue()


def secrets_to_say() -> dict[str, str]:
    said = {name: secret(name[:2].upper()) for name in ("text", "edited", "caption", "too_long")}
    said["too_long"] += "x" * 80  # over max_message_bytes
    passwords = ("alice_pw", "bob_pw", "new_pw", "wrong_pw", "cut_pw")
    said.update({name: secret("Pw") + "-long-enough" for name in passwords})
    said["short_pw"] = secret("Sh")  # under min_password_length
    said.update({name: "cn_" + secret("Tk") for name in ("forged_token", "query_token", "forged_ws_token")})
    return said


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_no_secret_reaches_the_log_and_every_line_is_one_event(tmp_path, log_format):
    said = secrets_to_say()
    with LoggedNode(tmp_path, log_format) as node:
        ids = await exercise(node, said)
    lines = node.lines()
    log = "\n".join(lines)
    for name, value in said.items():
        assert value not in log, f"the log contains {name}"
        assert value[3:] not in log, f"the log contains most of {name}"
    if log_format == "json":
        entries = [json.loads(line) for line in lines]  # every line is one JSON object
        for entry in entries:
            assert FIELDS <= set(entry) and entry["level"] in LEVELS, entry
        access = [e for e in entries if e["logger"] == "node.web.access"]
        assert {"request_id", "method", "path", "status", "duration_ms", "bytes", "client"} <= set(access[0])
        by_id = {e["request_id"]: e for e in access}
        assert by_id[ids["forged"]]["path"] == "/api/me" and by_id[ids["forged"]]["status"] == 401
        assert ids["sane"] == "proxy-42:a.b"  # a sane incoming id is kept ...
        assert by_id["proxy-42:a.b"]["path"] == "/api/info"  # ... and the query is not logged
        assert ids["insane"] != "no spaces <allowed>" and by_id[ids["insane"]]["path"] == "/healthz"
        assert any(e["method"] == "POST" and e["path"] == "/api/media" and e["status"] == 201 for e in access)
    else:
        for line in lines:
            assert TEXT_LINE.match(line), line
        assert any("GET /api/me 401" in line and f"[{ids['forged']}]" in line for line in lines)


def test_a_traceback_stays_on_its_line_and_tokens_are_scrubbed():
    logger = logging.getLogger("node.test")
    try:
        raise ValueError("failed for Bearer cn_" + "x" * 20)
    except ValueError:
        record = logger.makeRecord("node.test", logging.ERROR, __file__, 1, "it broke\nbadly", (), sys.exc_info())
    text = TextFormatter().format(record)
    assert "\n" not in text and "Traceback" in text and "cn_xxxx" not in text
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "it broke\nbadly" and "ValueError" in entry["exc"] and "cn_xxxx" not in entry["exc"]


def test_message_operations_leave_their_content_out_of_their_repr():
    """Failures are logged with the operation (`operation %r failed`): never with its text."""
    content = {"kind": "text", "text": "something private"}
    assert "something private" not in repr(SendMessage(origin=None, chat_id=1, client_msg_id="c1", content=content))
    assert "something private" not in repr(PostMessage(user_id=1, chat_id=1, content=content))


async def test_log_lines_a_request_causes_carry_its_id(tmp_path):
    """The id reaches the handler's task (quart-trio runs it in tasks of its own), so the
    log filter can put it on every line the request causes."""
    seen = []

    class Tracer:
        name = "tracer"

        @hookimpl
        def register_routes(self, ctx):
            async def trace(request):
                record = logging.LogRecord("node.test", logging.INFO, __file__, 1, "inside", (), None)
                RequestContext().filter(record)
                seen.append(record.request_id)
                return {}

            return [Route("GET", "/trace", trace)]

    async with trio.open_nursery() as nursery:
        node = await nursery.start(lambda task_status: serve_node(make_config(tmp_path), plugins=[Tracer()],
                                                                   load_entrypoints=False, task_status=task_status))
        async with httpx.AsyncClient(base_url=node.http_url) as client:
            given = await client.get("/trace", headers={"X-Request-Id": "from-the-proxy"})
            made = await client.get("/trace")
        node.request_shutdown()
    assert given.headers["x-request-id"] == "from-the-proxy"
    assert seen == ["from-the-proxy", made.headers["x-request-id"]]
