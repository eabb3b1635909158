"""A node reached through a proxy needs an admin token, and an admin token is long enough
not to be guessed: `chatnode serve` and `chatnode check-config` refuse anything else
with one line naming admin.token."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ADMIN_TOKEN, make_config

from node.config import ConfigError

CHATNODE = [sys.executable, "-m", "node"]

EXPOSED = [
    {"http": {"public_url": "https://chat.example.com"}},
    {"websocket": {"public_url": "wss://chat.example.com/ws"}},
    {"http": {"trusted_proxies": ["127.0.0.1"]}},
]


@pytest.mark.parametrize("sections", EXPOSED)
def test_a_node_behind_a_proxy_needs_an_admin_token(tmp_path, sections):
    with pytest.raises(ConfigError, match=r"^admin\.token: needed when"):
        make_config(tmp_path, **sections)
    assert make_config(tmp_path, admin={"token": ADMIN_TOKEN}, **sections).admin.token == ADMIN_TOKEN


@pytest.mark.parametrize("token", ["s3cret", "x" * 31, "a token with spaces in it, long enough", "é" * 40, "x" * 513])
def test_an_admin_token_is_at_least_32_printable_characters(tmp_path, token):
    with pytest.raises(ConfigError, match=r"^admin\.token: must be at least 32") as info:
        make_config(tmp_path, admin={"token": token})
    assert token not in str(info.value)  # a secret is never echoed


def write_config(tmp_path: Path, admin: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n[http]\nport = 0\npublic_url = "https://chat.example.com"\n'
                    f'trusted_proxies = ["127.0.0.1"]\n[websocket]\nport = 0\n{admin}')
    return path


@pytest.mark.engine("lmdb")
@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_both_commands_refuse_it_with_one_line(tmp_path, command):
    for admin, expected in (("", "admin.token: needed when http.public_url is set"),
                            ('[admin]\ntoken = "short"\n', "admin.token: must be at least 32")):
        result = subprocess.run([*CHATNODE, command, "--config", str(write_config(tmp_path, admin))],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.stderr
    good = write_config(tmp_path, f'[admin]\ntoken = "{ADMIN_TOKEN}"\n')
    result = subprocess.run([*CHATNODE, "check-config", "--config", str(good)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
