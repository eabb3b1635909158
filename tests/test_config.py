"""config.toml: defaults, and one clear line naming the key for every kind of mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from node.config import ConfigError, load_config, structure_config

pytestmark = pytest.mark.engine("lmdb")  # configuration parsing: no storage

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_config_is_the_defaults():
    import attrs

    from node.plugin_manager import Plugins

    shipped = load_config(ROOT / "config.toml")
    defaults = structure_config({}, ROOT)
    assert attrs.evolve(shipped, plugins=attrs.evolve(shipped.plugins, settings={})) == defaults
    plugins = Plugins(shipped.plugins, load_entrypoints=False)  # every plugin section, at its defaults
    for name in shipped.plugins.settings:
        assert plugins.settings(name) == type(plugins.settings(name))(), name


@pytest.mark.parametrize(
    "toml, message",
    [
        ("[node]\nid = 2000\n", "node.id: must be between 0 and 1023, got 2000"),
        ("[node]\nidd = 1\n", "unknown key(s) in [node]: idd; did you mean id?"),
        ("[nodes]\nid = 1\n", "unknown key(s) in the top level: nodes; did you mean node?"),
        ("[http]\nqqq = 1\n", "unknown key(s) in [http]: qqq; the keys there are host, port, public_url, "),
        ("[plugins]\nfoo = 1\n", "the keys there are disabled, event_queue and a [plugins.<name>] table per plugin"),
        ('[http]\nport = "80"\n', "http.port: expected an integer"),
        ("[limits]\nframes_per_second = true\n", "limits.frames_per_second: expected a number, got a boolean"),
        ('[accounts]\nregistration_open = "yes"\n', "accounts.registration_open: expected true or false"),
        ("[storage]\nmax_batch = 0\n", "storage.max_batch: must be between 1 and 100000, got 0"),
        ("[limits]\nmax_message_bytes = 65536\nmax_frame_bytes = 65536\n",
         "limits.max_message_bytes: 65536 does not fit in a frame of limits.max_frame_bytes = 65536"),
        ('[log]\nformat = "xml"\n', "log.format: must be one of text, json; got 'xml'"),
        ('[http]\nallowed_origins = ["https://chat.example/app"]\n',
         "http.allowed_origins: 'https://chat.example/app' is not a web origin"),
        ('[http]\npublic_url = "chat.example.com"\n[admin]\ntoken = "0123456789abcdef0123456789abcdef"\n',
         "http.public_url: must be a URL starting with http:// or https:// and a host"),
        ('[websocket]\npublic_url = "https://chat.example.com/ws"\n[admin]\ntoken = "0123456789abcdef0123456789abcdef"\n',
         "websocket.public_url: must be a URL starting with ws:// or wss:// and a host"),
        ('[websocket]\npath = "ws"\n', "websocket.path: 'ws' is not a URL path (it starts with /"),
        ("[node\n", "not valid TOML"),
    ],
)
def test_bad_config_stops_startup_with_one_line_naming_the_key(tmp_path, toml, message):
    path = tmp_path / "config.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    result = subprocess.run(
        [sys.executable, "-m", "node", "serve", "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_relative_data_dir_is_resolved_against_the_config_file(tmp_path):
    path = tmp_path / "sub" / "config.toml"
    path.parent.mkdir()
    path.write_text('[node]\ndata_dir = "here"\n')
    assert load_config(path).data_dir == (tmp_path / "sub" / "here").resolve()


def test_check_config_command():
    result = subprocess.run(
        [sys.executable, "-m", "node", "check-config", "--config", str(ROOT / "config.toml")],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0 and "ok" in result.stdout


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_disabling_a_plugin_that_does_not_exist_stops_startup(tmp_path, command):
    """A misspelt name would otherwise leave the plugin meant to be off running."""
    path = tmp_path / "config.toml"
    path.write_text('[node]\ndata_dir = "data"\n[plugins]\ndisabled = ["lastseen", "reciepts"]\n')
    result = subprocess.run([sys.executable, "-m", "node", command, "--config", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    problem, _, names = lines[0].partition("; the plugins are ")
    assert problem.endswith("plugins.disabled: no plugin is named 'reciepts'")
    assert {"analytics", "lastseen", "media", "push", "receipts"} <= set(names.split(", "))  # and any installed
