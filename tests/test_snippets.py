"""Every code block in README.md and docs/*.md runs, as written, against a real node.

Blocks tagged ``sh`` (or bash, shell, console) and ``python`` are extracted and run, one
document at a time and in order, against a node this test starts (in-process, loopback,
free ports, its own data dir). ``localhost:8080`` / ``127.0.0.1:8080`` and ``:8081`` in a
block become the test node's HTTP and chat socket addresses; nothing else is changed.
Shell blocks run in bash (``-e -o pipefail``), Python blocks as scripts with the node's
interpreter, each in the document's own working folder, with a time limit. In a shell
block whose lines start with ``$ ``, only those lines are commands (the rest is output).
A shell block's output must not contain an error body (``{"error": ...}``).

Other blocks (json, js, untagged diagrams and output) are not code and are not run; a
``toml`` block marked ``config`` is a node config and must pass ``chatnode check-config``.

An HTML comment right before a block says how to run it when the default is not enough:

- ``<!-- snippet: skip: why -->``: not run (keep these few, and say why);
- ``<!-- snippet: compiles: why -->``: a Python listing that is not a program (an API
  overview): only checked to compile, top-level ``await`` allowed (as few, and say why);
- ``<!-- snippet: background until "text" -->``: started in the background; the next
  blocks run once it has printed ``text``; stopped when the document is done;
- ``<!-- snippet: continues -->``: the rest of the previous Python block (one script);
- ``<!-- snippet: given ... -->``: a fragment that uses what a reader has at that point:
  in Python, ``alice`` and ``bob`` (logged-in ``ChatClient``s) and ``chat_id`` (their 1-1
  chat), with top-level ``await``; in a shell, ``$TOKEN`` (alice's) and ``beach.jpg``;
  with ``stopped node`` in the marker, also ``$CONFIG`` (the config of a node that ran,
  with alice and bob chatting, and stopped: LMDB in its own data dir) and ``$DATABASE`` (the
  URL of an empty PostgreSQL database on the tests' private server);
- ``twice``: run two times (a script must work again on the same node);
- ``prints "text"``: its output must contain ``text``;
- ``pytest``: a test module, run with pytest (with pytest-trio's ``trio_mode = true``).
"""

from __future__ import annotations

import io
import os
import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from node.client import ChatClient

from conftest import make_config, running_node

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"sh", "bash", "shell", "console"}
RUN_LIMIT = 60.0  # seconds for one block
MAX_SKIPPED = 6  # skipping is the exception: a block that cannot run is a block that can rot
MAX_COMPILED = 4

FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = re.compile(r"^<!--\s*snippet:\s*(.*?)\s*-->$")
OPTIONS = ("continues", "given", "twice", "pytest", "config")


@dataclass
class Snippet:
    document: str
    line: int
    lang: str
    code: str
    marker: str = ""
    options: set[str] = field(default_factory=set)

    @property
    def where(self) -> str:
        return f"{self.document}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        match = re.match(r"skip:\s*(.*)", self.marker)
        return match.group(1) if match else None

    @property
    def compile_only(self) -> str | None:
        match = re.match(r"compiles:\s*(.*)", self.marker)
        return match.group(1) if match else None

    @property
    def ready_text(self) -> str | None:
        match = re.search(r'background until "(.+?)"', self.marker)
        return match.group(1) if match else None

    @property
    def expected_output(self) -> str | None:
        match = re.search(r'prints "(.+?)"', self.marker)
        return match.group(1) if match else None

    @property
    def runs(self) -> bool:
        if self.skip_reason is not None or self.compile_only is not None:
            return False
        return self.lang in SHELL or self.lang == "python" or (self.lang == "toml" and "config" in self.options)


def extract(path: Path) -> list[Snippet]:
    """The fenced blocks of a Markdown file, with the marker comment before each."""
    lines = path.read_text().splitlines()
    out: list[Snippet] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        before = next((line.strip() for line in reversed(lines[:start]) if line.strip()), "")
        marker = MARKER.match(before)
        text = marker.group(1) if marker else ""
        options = {word for word in OPTIONS if re.search(rf"\b{word}\b", text)}
        code = "\n".join(body) + "\n"
        out.append(Snippet(path.relative_to(ROOT).as_posix(), start + 1, fence.group(1), code, text, options))
    return out


def runnable(path: Path) -> list[Snippet]:
    """The blocks to run, a Python block and the ones that continue it joined into one."""
    out: list[Snippet] = []
    for snippet in extract(path):
        if not snippet.runs:
            continue
        if "continues" in snippet.options:
            assert out and out[-1].lang == "python", f"{snippet.where}: 'continues' must follow a Python block"
            first = out.pop()
            snippet = Snippet(first.document, first.line, "python", first.code + "\n" + snippet.code, snippet.marker,
                              (first.options | snippet.options) - {"continues"})
        out.append(snippet)
    return out


def all_snippets() -> list[Snippet]:
    return [s for doc in DOCUMENTS for s in extract(doc)]


# -- the markers themselves ---------------------------------------------------------


def test_every_marker_is_understood_and_skips_are_few_and_explained():
    skipped, compiled = [], []
    for snippet in all_snippets():
        if not snippet.marker:
            continue
        if snippet.skip_reason is not None:
            assert len(snippet.skip_reason) > 10, f"{snippet.where}: say why it cannot run"
            skipped.append(snippet.where)
            continue
        if snippet.compile_only is not None:
            assert snippet.lang == "python" and len(snippet.compile_only) > 10, f"{snippet.where}: say why"
            compiled.append(snippet.where)
            continue
        assert snippet.runs, f"{snippet.where}: a marker on a block that is not run ({snippet.lang or 'untagged'})"
        known = snippet.options or snippet.ready_text or snippet.expected_output
        assert known, f"{snippet.where}: unknown snippet marker {snippet.marker!r}"
    assert len(skipped) <= MAX_SKIPPED, f"too many blocks are not run: {skipped}"
    assert len(compiled) <= MAX_COMPILED, f"too many blocks are only compiled: {compiled}"


def test_listings_compile():
    import ast

    for snippet in all_snippets():
        if snippet.compile_only is not None:
            try:
                compile(snippet.code, snippet.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            except SyntaxError as exc:
                raise AssertionError(f"{snippet.where} does not compile: {exc}") from None


def test_there_are_snippets_to_run():
    assert len([s for doc in DOCUMENTS for s in runnable(doc)]) >= 8


# -- running a document's blocks ----------------------------------------------------


def rewrite(code: str, http_port: int, ws_port: int) -> str:
    code = re.sub(r"\b(localhost|127\.0\.0\.1):8080\b", f"127.0.0.1:{http_port}", code)
    return re.sub(r"\b(localhost|127\.0\.0\.1):8081\b", f"127.0.0.1:{ws_port}", code)


GIVEN_PYTHON = '''\
import trio
from node.client import ChatClient

async def main():
    async with ChatClient({url!r}) as alice, ChatClient({url!r}) as bob:
        await alice.login("alice", {password!r})
        await bob.login("bob", {password!r})
        chat_id = (await alice.open_direct(username="bob"))["id"]
{body}
trio.run(main)
'''
GIVEN_PASSWORD = "alice and bob's password"


class Runner:
    """Runs one document's blocks in its own folder against `node`."""

    def __init__(self, node, folder: Path, nursery: trio.Nursery, request: pytest.FixtureRequest) -> None:
        self.node = node
        self.folder = folder
        self.nursery = nursery
        self.request = request
        self.token: str | None = None
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",  # output as a terminal would show it, line by line
        }

    async def run(self, snippet: Snippet) -> None:
        if "given" in snippet.options:
            await self.give()
            if "stopped node" in snippet.marker:
                await self.give_stopped_node()
        command = self.command(snippet)
        if snippet.ready_text is not None:
            await self.nursery.start(self.background, snippet, command)
            return
        for _ in range(2 if "twice" in snippet.options else 1):
            output = await self.foreground(snippet, command)
            expected = snippet.expected_output
            assert expected is None or expected in output, f"{snippet.where}: expected {expected!r} in:\n{output}"

    def command(self, snippet: Snippet) -> list[str]:
        code = rewrite(snippet.code, self.node.http_port, self.node.ws_port)
        script = self.folder / f"snippet_{snippet.line}"
        if snippet.lang in SHELL:
            if any(line.startswith("$ ") for line in code.splitlines()):
                code = "\n".join(line[2:] for line in code.splitlines() if line.startswith("$ ")) + "\n"
            script = script.with_suffix(".sh")
            script.write_text(code)
            return ["bash", "-e", "-o", "pipefail", str(script)]
        if snippet.lang == "toml":
            script = script.with_suffix(".toml")
            script.write_text(code)
            return [sys.executable, "-m", "node", "check-config", "--config", str(script)]
        if "given" in snippet.options:
            code = GIVEN_PYTHON.format(url=self.node.http_url, password=GIVEN_PASSWORD,
                                       body=textwrap.indent(code, " " * 8))
        if "pytest" in snippet.options:
            script = script.with_name(f"test_snippet_{snippet.line}.py")
            script.write_text(code)
            (self.folder / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n")
            return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(script)]
        script = script.with_suffix(".py")
        script.write_text(code)
        return [sys.executable, str(script)]

    async def foreground(self, snippet: Snippet, command: list[str]) -> str:
        with trio.move_on_after(RUN_LIMIT) as limit:
            result = await trio.run_process(command, cwd=self.folder, env=self.env, check=False,
                                            capture_stdout=True, capture_stderr=True)
        assert not limit.cancelled_caught, f"{snippet.where}: still running after {RUN_LIMIT} s:\n{snippet.code}"
        out, err = result.stdout.decode(), result.stderr.decode()
        report = (f"{snippet.where} failed (exit {result.returncode}):\n{snippet.code}\n"
                  f"--- stdout\n{out}\n--- stderr\n{err}")
        assert result.returncode == 0, report
        assert "Traceback" not in err, report
        if snippet.lang in SHELL:
            assert not re.search(r'\{"error":', out), report
        return out + err

    async def background(self, snippet: Snippet, command: list[str], task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Start `command`, report once it printed the ready text, keep reading its output."""
        import subprocess

        process = await trio.lowlevel.open_process(command, cwd=self.folder, env=self.env,
                                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output = io.StringIO()
        try:
            with trio.move_on_after(RUN_LIMIT) as limit:
                while snippet.ready_text not in output.getvalue():
                    chunk = await process.stdout.receive_some()
                    assert chunk, f"{snippet.where} ended before printing {snippet.ready_text!r}:\n{output.getvalue()}"
                    output.write(chunk.decode())
            assert not limit.cancelled_caught, f"{snippet.where} never printed {snippet.ready_text!r}"
            task_status.started()
            while chunk := await process.stdout.receive_some():
                output.write(chunk.decode())
            raise AssertionError(f"{snippet.where} (in the background) ended early:\n{output.getvalue()}")
        finally:
            process.kill()  # our own child, by its handle
            with trio.CancelScope(shield=True):
                await process.wait()

    async def give(self) -> None:
        """alice and bob registered and in a 1-1 chat, alice's token, a photo (once)."""
        if self.token is not None:
            return
        async with ChatClient(self.node.http_url) as alice, ChatClient(self.node.http_url) as bob:
            await alice.register("alice", GIVEN_PASSWORD)
            await bob.register("bob", GIVEN_PASSWORD)
            await alice.login("alice", GIVEN_PASSWORD, device="snippets")
            await alice.open_direct(username="bob")
            self.token = alice.token
        self.env["TOKEN"] = self.token
        (self.folder / "beach.jpg").write_bytes(photo())


    async def give_stopped_node(self) -> None:
        """$CONFIG: a node that ran (alice and bob chatted) and stopped; $DATABASE: an
        empty PostgreSQL database (once per document)."""
        if "CONFIG" in self.env:
            return
        home = self.folder / "stopped-node"
        async with running_node(make_config(home, storage={"engine": "lmdb"})) as node:
            async with ChatClient(node.http_url) as alice, ChatClient(node.http_url) as bob:
                await alice.register("alice", GIVEN_PASSWORD)
                await bob.register("bob", GIVEN_PASSWORD)
                await alice.login("alice", GIVEN_PASSWORD)
                chat = await alice.open_direct(username="bob")
                async with alice.connect() as conn:
                    await conn.send_text(chat["id"], "moving to a cluster")
        (home / "config.toml").write_text('[node]\ndata_dir = "data"\n')
        server = self.request.getfixturevalue("pg_server")
        name = server.create_database().rsplit("dbname=", 1)[1]
        self.env["CONFIG"] = str(home / "config.toml")
        self.env["DATABASE"] = f"postgresql://chat@127.0.0.1:{server.port}/{name}"


def photo() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (1200, 1600), (40, 120, 200)).save(out, "JPEG")
    return out.getvalue()


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if runnable(d)], ids=lambda d: str(d.relative_to(ROOT)))
async def test_the_snippets_of_a_document_run(document, tmp_path, request):
    folder = tmp_path / "work"
    folder.mkdir()
    async with running_node(make_config(tmp_path)) as node:
        async with trio.open_nursery() as background:
            runner = Runner(node, folder, background, request)
            for snippet in runnable(document):
                await runner.run(snippet)
            background.cancel_scope.cancel()
