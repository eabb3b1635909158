"""Every start-up failure an operator can cause is one line on stderr that names the
setting and says what to do, and a non-zero exit; `check-config` rejects whatever
`serve` would reject before binding. Each case runs the real `chatnode` command."""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import storage_toml
from ports import free_port


@contextmanager
def taken(port: int, kind: int = socket.SOCK_STREAM) -> Iterator[None]:
    """Another program holding a port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", port))
        if kind == socket.SOCK_STREAM:
            s.listen()
        yield


def write_config(folder: Path, text: str = "", *, http: int | None = None, ws: int | None = None) -> Path:
    path = folder / "config.toml"
    sections = "" if "[node]" in text else '[node]\ndata_dir = "data"\n'
    if "[http]" not in text:
        sections += f"[http]\nport = {http or free_port()}\n"
    if "[websocket]" not in text:
        sections += f"[websocket]\nport = {ws or free_port()}\n"
    path.write_text(sections + "[accounts]\nargon2_time_cost = 1\nargon2_memory_kib = 64\n" + text)
    return path


def chatnode(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node", *args], capture_output=True, text=True, timeout=timeout)


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z (DEBUG|INFO) [\w.]+: ")


def assert_one_line(result: subprocess.CompletedProcess, *parts: str) -> None:
    """The failure is one line; before it there may be only the node's ordinary log lines
    (what it loaded), no warning, no error and no traceback."""
    lines = [line for line in result.stderr.strip().splitlines() if not LOG_LINE.match(line)]
    assert result.returncode != 0, result
    assert len(lines) == 1, result.stderr
    for part in parts:
        assert part in lines[0], lines[0]


def serve_fails(config: Path, *parts: str) -> None:
    assert_one_line(chatnode("serve", "--config", str(config)), *parts)


def both_fail(config: Path, *parts: str) -> None:
    """check-config finds it too, without starting anything."""
    assert_one_line(chatnode("check-config", "--config", str(config)), *parts)
    serve_fails(config, *parts)


def test_http_port_in_use(tmp_path):
    port = free_port()
    with taken(port):
        serve_fails(write_config(tmp_path, http=port), f"http.port: 127.0.0.1:{port} is already in use",
                    "choose another http.port")


def test_chat_socket_port_in_use(tmp_path):
    port = free_port()
    with taken(port):
        serve_fails(write_config(tmp_path, ws=port), f"websocket.port: 127.0.0.1:{port} is already in use",
                    "choose another websocket.port")


def test_listening_on_an_address_the_machine_does_not_have(tmp_path):
    config = write_config(tmp_path, f'[http]\nhost = "192.0.2.1"\nport = {free_port()}\n')
    serve_fails(config, "http.host: 192.0.2.1 is not an address of this machine")


def test_same_port_for_http_and_the_chat_socket(tmp_path):
    port = free_port()
    both_fail(write_config(tmp_path, http=port, ws=port), f"websocket.port: {port} is also http.port")


def test_same_port_on_two_addresses_is_fine(tmp_path):
    port = free_port()
    config = write_config(tmp_path, f'[http]\nport = {port}\n[websocket]\nhost = "127.0.0.2"\nport = {port}\n')
    result = chatnode("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr


def test_data_dir_that_cannot_be_created(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    config = write_config(tmp_path, '[node]\ndata_dir = "a-file/data"\n')
    both_fail(config, "node.data_dir: cannot create", "a-file/data")


def test_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "data").write_text("not a folder")
    both_fail(write_config(tmp_path), "node.data_dir:", "is not a directory")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc (not writable even by root)")
def test_data_dir_on_a_filesystem_the_node_cannot_write(tmp_path):
    both_fail(write_config(tmp_path, '[node]\ndata_dir = "/proc/chatnode-test-data"\n'), "node.data_dir:",
              "/proc/chatnode-test-data")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere; the /proc case covers it")
def test_data_dir_without_write_permission(tmp_path):
    (tmp_path / "locked").mkdir(mode=0o555)
    both_fail(write_config(tmp_path, '[node]\ndata_dir = "locked"\n'), "node.data_dir:", "not writable")


def test_check_config_leaves_no_data_dir_behind(tmp_path):
    config = write_config(tmp_path, '[node]\ndata_dir = "new/data"\n')
    assert chatnode("check-config", "--config", str(config)).returncode == 0
    assert not (tmp_path / "new").exists()


def test_invalid_choice_in_a_plugin_section(tmp_path):
    config = write_config(tmp_path, '[plugins.lastseen]\ndefault_visibility = "friends"\n')
    both_fail(config, "plugins.lastseen.default_visibility: must be one of everyone, contacts, nobody; got 'friends'")


def test_out_of_range_value_in_a_plugin_section(tmp_path):
    both_fail(write_config(tmp_path, "[plugins.media]\njpeg_quality = 200\n"),
              "plugins.media.jpeg_quality: must be <= 95, got 200")


def test_unknown_key_in_a_plugin_section(tmp_path):
    both_fail(write_config(tmp_path, '[plugins.media]\ncolour = "red"\n'), "unknown key(s) in [plugins.media]: colour")


def test_a_section_for_a_plugin_that_is_not_loaded(tmp_path):
    both_fail(write_config(tmp_path, "[plugins.nosuch]\nx = 1\n"), "[plugins.nosuch]: no plugin with that name")


def cluster_section(port: int, host: str = "127.0.0.1") -> str:
    key = base64.b64encode(os.urandom(32)).decode()  # with a key: no warning about plain packets
    return f'[cluster]\nenabled = true\nbind_host = "{host}"\nbind_port = {port}\nkeys = ["{key}"]\n'


@pytest.mark.engine("postgresql")  # a cluster keeps its state in PostgreSQL: it opens before the cluster binds
def test_cluster_port_in_use(tmp_path):
    port = free_port(socket.SOCK_DGRAM)
    with taken(port, socket.SOCK_DGRAM):
        serve_fails(write_config(tmp_path, cluster_section(port) + storage_toml(tmp_path / "data")),
                    f"cluster.bind_port: 127.0.0.1:{port} is already in use")


@pytest.mark.engine("postgresql")
def test_cluster_on_an_address_the_machine_does_not_have(tmp_path):
    config = write_config(tmp_path, cluster_section(free_port(), "192.0.2.1") + 'advertise_host = "192.0.2.1"\n'
                          + storage_toml(tmp_path / "data"))
    serve_fails(config, "cluster.bind_host: 192.0.2.1 is not an address of this machine")


def test_a_cluster_without_postgresql_is_refused(tmp_path):
    both_fail(write_config(tmp_path, cluster_section(free_port())), 'storage.engine: a cluster keeps its state in PostgreSQL')


def test_cluster_port_shared_with_http(tmp_path):
    port = free_port()
    both_fail(write_config(tmp_path, cluster_section(port), http=port), f"cluster.bind_port: {port} is also http.port")


def test_cluster_on_all_addresses_needs_an_advertised_one(tmp_path):
    both_fail(write_config(tmp_path, cluster_section(free_port(), "0.0.0.0")), "cluster.advertise_host: needed")


def test_config_file_that_cannot_be_read(tmp_path):
    both_fail(tmp_path, "cannot read the config file")


def test_a_second_node_on_the_same_data_dir(tmp_path):
    first = write_config(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "node", "serve", "--config", str(first)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("chatnode is running: open http://127.0.0.1:"), line  # not "chatnode chatnode"
        other = tmp_path / "other"
        other.mkdir()
        second = write_config(other, f'[node]\ndata_dir = "{tmp_path / "data"}"\n')
        serve_fails(second, f"node.data_dir: {tmp_path / 'data'} is in use by another running node (pid {proc.pid})")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
