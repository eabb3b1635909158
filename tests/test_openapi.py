"""The OpenAPI 3.1 document of the HTTP API (GET /api/openapi.json, node/web/openapi.py) is
true: it describes every route the node serves and nothing else, and schemathesis, sending
a real node what the document allows and what it does not, finds no answer that breaks it
(no 500, every status, content type, header and body as documented, bad input refused,
auth enforced)."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from conftest import make_config, new_user, running_node

from node.web.openapi import OPERATIONS, served_operations

ST = Path(sys.executable).with_name("st")
SEED = 20260101
MAX_EXAMPLES = 20  # per operation and phase: under a minute per engine here
CHECKS_LEFT_OUT = (
    "positive_data_acceptance",  # a valid id of nothing (404) is not a wrong answer
    "object_level_authorization",  # needs two users' credentials in schemathesis: tests/test_*.py do it
)


async def test_the_document_describes_every_route_and_only_those(node):
    async with httpx.AsyncClient(base_url=node.http_url) as http:
        response = await http.get("/api/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["openapi"] == "3.1.0"
    served = served_operations(node.http_app)
    assert sorted(served - set(OPERATIONS)) == [], "routes the document does not describe"
    assert sorted(set(OPERATIONS) - served) == [], "operations no route serves"
    listed = {f"{method.upper()} {path}" for path, operations in document["paths"].items() for method in operations}
    assert listed == served


async def test_a_plugin_that_is_off_leaves_its_operations_out(tmp_path):
    config = make_config(tmp_path, plugins={"disabled": ["push"]})
    async with running_node(config) as node, httpx.AsyncClient(base_url=node.http_url) as http:
        paths = (await http.get("/api/openapi.json")).json()["paths"]
    assert "/api/push/targets" not in paths and "/api/media" in paths


def png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(out, "PNG")
    return out.getvalue()


def settings_file(path: Path, values: dict[str, list[str]]) -> Path:
    """schemathesis.toml: besides what it makes up, path parameters take ids of things that
    exist half of the time, so operations get past `404` to their real work."""
    lines = []
    for name, found in values.items():
        lines.append(f"[dictionaries.{name}]\nvalues = [{', '.join(repr(v) for v in found)}]\n")
    lines.append("[parameters]")
    for name in values:
        lines.append(f'"path.{name}" = {{ dictionary = "{name}", probability = 0.5 }}')
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.skipif(shutil.which(str(ST)) is None, reason="schemathesis is in the test extras")
async def test_schemathesis_finds_nothing(tmp_path):
    config = make_config(tmp_path)
    async with running_node(config) as node:
        alice, bob = await new_user(node, "alice"), await new_user(node, "bob")
        direct = await alice.open_direct(username="bob")
        group = await alice.create_group("plans", usernames=["bob"])
        media = await alice.upload(png(), name="dot.png")
        async with alice.connect() as conn:
            await conn.send_text(direct["id"], "hello")
            await conn.send_text(group["id"], "photo", kind="image", media=media["id"])
        settings = settings_file(tmp_path / "schemathesis.toml", {
            "chat_id": [direct["id"], group["id"]],
            "seq": ["1", "2"],
            "user_id": [bob.user["id"]],
            "media_id": [media["id"]],
            "ref": ["bob", bob.user["id"]],
        })
        command = [
            str(ST), "--config-file", str(settings), "--no-color", "run", f"{node.http_url}/api/openapi.json",
            "--phases", "examples,coverage,fuzzing", "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES),
            "--workers", "1", "--checks", "all", "--exclude-checks", ",".join(CHECKS_LEFT_OUT),
            "--header", f"Authorization: Bearer {alice.token}",
            "--exclude-path", "/api/logout",  # it would end the run's own session
            "--request-timeout", "30", "--output-truncate", "false",
        ]
        with trio.fail_after(600):
            result = await trio.run_process(command, capture_stdout=True, stderr=subprocess.STDOUT, check=False,
                                            cwd=tmp_path)
        output = result.stdout.decode(errors="replace")
        await alice.aclose()
        await bob.aclose()
    assert result.returncode == 0, output[-20_000:]
    assert " passed" in output and "failure" not in output.split("SUMMARY")[-1], output[-5000:]
