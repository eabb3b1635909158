"""contrib/: the systemd unit, the configs, the Containerfile, and the reverse-proxy
examples, checked with the real tools where this machine has them. The nginx and Caddy
examples are run for real in front of a node (TLS with a test certificate, loopback
ports): the web client, the REST API and the chat socket all work through them."""

from __future__ import annotations

import datetime
import ipaddress
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import orjson
import pytest
import trio
from conftest import deep_merge, running_node
from ports import free_port
from trio_websocket import open_websocket_url

from node.config import structure_config
from node.testing import wait_until

ROOT = Path(__file__).resolve().parent.parent
CONTRIB = ROOT / "contrib"
CHATNODE = str(Path(sys.executable).parent / "chatnode")



def replaced(text: str, *pairs: tuple[str, str]) -> str:
    """`text` with each (old, new) replaced; an old one missing means the file changed shape."""
    for old, new in pairs:
        assert old in text, f"{old!r} is no longer in the file: update this test"
        text = text.replace(old, new)
    return text


def unit_settings() -> dict[str, str]:
    text = (CONTRIB / "chatnode.service").read_text()
    return dict(re.findall(r"^(\w+)=(.*)$", text, re.MULTILINE))


# -- systemd ---------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_the_unit_verifies_clean_and_is_hardened(tmp_path):
    unit = tmp_path / "chatnode.service"
    unit.write_text((CONTRIB / "chatnode.service").read_text().replace("/opt/chatnode/venv/bin/chatnode", CHATNODE))
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and not verify.stdout.strip() and not verify.stderr.strip(), verify
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                              capture_output=True, text=True, timeout=60)
    exposure = re.search(r"Overall exposure level for chatnode.service: ([\d.]+)", security.stdout)
    if exposure is None:
        pytest.skip("this systemd-analyze cannot rate a unit offline")
    assert float(exposure.group(1)) <= 2.0, security.stdout


def test_the_unit_and_the_service_config_agree(tmp_path):
    unit = unit_settings()
    config = tomllib.loads((CONTRIB / "chatnode.toml").read_text())
    assert config["node"]["data_dir"] == f"/var/lib/{unit['StateDirectory']}" == unit["ReadWritePaths"]
    assert unit["ExecStart"].endswith("serve --config /etc/chatnode/config.toml")
    assert unit["User"] == "chatnode" and unit["NoNewPrivileges"] == "yes" and unit["ProtectSystem"] == "strict"
    assert int(unit["LimitNOFILE"]) >= 65536
    assert config["http"]["host"] == config["websocket"]["host"] == "127.0.0.1"  # only the proxy reaches it
    assert config["websocket"]["public_url"].startswith("wss://") and config["http"]["public_url"].startswith("https://")


def test_a_start_up_error_is_not_restarted_in_a_loop():
    """serve exits 2 on a bad config or any start-up error; systemd's RestartPreventExitStatus
    looks at the main process only, so the config is not checked in an ExecStartPre (whose
    failure would be restarted every RestartSec)."""
    unit = unit_settings()
    assert unit["Restart"] == "on-failure" and "2" in unit["RestartPreventExitStatus"].split()
    assert "ExecStartPre" not in unit


@pytest.mark.parametrize("name", ["chatnode.toml", "container.toml"])
def test_the_shipped_configs_pass_check_config(tmp_path, name):
    text = (CONTRIB / name).read_text()
    path = tmp_path / name
    text = replaced(text, ('data_dir = "/var/lib/chatnode"', f'data_dir = "{tmp_path / "data"}"'))
    if name == "chatnode.toml":  # as the guide makes it (docs/operations.md, step 4)
        text = replaced(text, ('token = ""', f'token = "{secrets.token_hex(32)}"'))
    path.write_text(text)
    result = subprocess.run([CHATNODE, "check-config", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_containerfile_copies_what_exists_and_serves_its_config():
    text = (CONTRIB / "Containerfile").read_text()
    for sources in re.findall(r"^COPY (.+) \S+$", text, re.MULTILINE):
        for source in sources.split():
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
    assert '"/etc/chatnode/config.toml"' in text and "COPY contrib/container.toml /etc/chatnode/config.toml" in text
    container = tomllib.loads((CONTRIB / "container.toml").read_text())
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", text, re.MULTILINE).group(1).split()}
    assert exposed == {container["http"]["port"], container["websocket"]["port"]}
    assert re.search(r"^VOLUME " + re.escape(container["node"]["data_dir"]) + "$", text, re.MULTILINE)
    assert re.search(r"^USER chatnode$", text, re.MULTILINE)  # never root


# -- reverse proxies, for real ------------------------------------------------------------


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the tests' TLS)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def node_config(tmp_path: Path, public: str):
    """contrib/chatnode.toml on free ports, data in tmp_path, public URLs at the proxy."""
    base = tomllib.loads((CONTRIB / "chatnode.toml").read_text())
    overrides = {
        "node": {"data_dir": str(tmp_path / "data")},
        "http": {"port": free_port(), "public_url": public},
        "websocket": {"port": free_port(), "public_url": public.replace("https://", "wss://") + "/ws"},
        "accounts": {"argon2_time_cost": 1, "argon2_memory_kib": 64},
        "admin": {"token": secrets.token_hex(32)},
    }
    return structure_config(deep_merge(base, overrides), tmp_path)


async def wait_listening(port: int, proc: subprocess.Popen, log: Path) -> None:
    """Until the proxy accepts connections on `port` (another process: nothing to wait on)."""

    async def listening() -> bool:
        assert proc.poll() is None, f"the proxy exited: {log.read_text()[-3000:]}"
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            return False
        await stream.aclose()
        return True

    await wait_until(listening, 30, interval=0.05)


async def wait_serving(public: str, trust: ssl.SSLContext, proc: subprocess.Popen, log: Path) -> None:
    """Until the proxy answers over TLS: Caddy listens before its internal CA has issued
    the site's certificate, and a loaded machine widens that gap."""

    async def answers() -> bool:
        assert proc.poll() is None, f"the proxy exited: {log.read_text()[-3000:]}"
        try:
            async with httpx.AsyncClient(verify=trust, timeout=5) as http:
                await http.get(public + "/api/info")
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
            return False
        return True

    await wait_until(answers, 60, interval=0.1)


async def use_the_node_through(public: str, trust: ssl.SSLContext) -> None:
    """The web client, the API and the chat socket, as a user reaches them."""
    async with httpx.AsyncClient(base_url=public, verify=trust) as http:
        page = await http.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        ws_url = public.replace("https://", "wss://") + "/ws"
        assert public.replace("https://", "wss://") in page.headers["content-security-policy"]  # connect-src
        info = (await http.get("/api/info")).json()
        assert info["ws_url"] == ws_url
        registered = await http.post("/api/register", json={"username": "alice", "password": "a long password"})
        assert registered.status_code == 201 and registered.headers.get("x-request-id")
        login = await http.post("/api/login", json={"username": "alice", "password": "a long password"})
        token = login.json()["token"]
    async with open_websocket_url(ws_url, ssl_context=trust) as ws:
        await ws.send_message(orjson.dumps({"type": "hello", "token": token}).decode())
        assert b'"welcome"' in orjson.dumps(orjson.loads(await ws.get_message()))
        await ws.send_message('{"type": "ping"}')
        with trio.fail_after(10):
            while "pong" not in await ws.get_message():
                pass


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)  # our own child, by its handle
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(shutil.which("nginx") is None, reason="no nginx here (apt-get install nginx)")
async def test_the_nginx_example_serves_a_node_over_tls(tmp_path):
    cert, key = make_certificate(tmp_path)
    https_port, http_port = free_port(), free_port()
    public = f"https://127.0.0.1:{https_port}"
    config = node_config(tmp_path, public)
    site = replaced(
        (CONTRIB / "nginx.conf").read_text(),
        ("    listen 80;\n", f"    listen 127.0.0.1:{http_port};\n"), ("    listen [::]:80;\n", ""),
        ("    listen 443 ssl http2;\n", f"    listen 127.0.0.1:{https_port} ssl http2;\n"),
        ("    listen [::]:443 ssl http2;\n", ""),
        ("/etc/letsencrypt/live/chat.example.com/fullchain.pem", str(cert)),
        ("/etc/letsencrypt/live/chat.example.com/privkey.pem", str(key)),
        ("http://127.0.0.1:8080", f"http://127.0.0.1:{config.http.port}"),
        ("http://127.0.0.1:8081", f"http://127.0.0.1:{config.websocket.port}"),
    )
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "tmp").mkdir()
    main = tmp_path / "nginx.conf"
    main.write_text(f"""
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/tmp;
    proxy_temp_path {tmp_path}/tmp;
    include {tmp_path}/site.conf;
}}
""")
    check = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(main)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    trust = ssl.create_default_context(cafile=str(cert))
    async with running_node(config):
        proc = subprocess.Popen(["nginx", "-p", str(tmp_path), "-c", str(main), "-g", "daemon off; master_process off;"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await wait_listening(https_port, proc, tmp_path / "error.log")
            await use_the_node_through(public, trust)
            async with httpx.AsyncClient() as plain:
                redirect = await plain.get(f"http://127.0.0.1:{http_port}/api/info")
            assert redirect.status_code == 301 and redirect.headers["location"].startswith("https://")
        finally:
            stop(proc)


@pytest.mark.skipif(shutil.which("caddy") is None, reason="no caddy here (apt-get install caddy)")
async def test_the_caddy_example_serves_a_node_over_tls(tmp_path):
    https_port = free_port()
    public = f"https://127.0.0.1:{https_port}"
    config = node_config(tmp_path, public)
    storage = tmp_path / "caddy"
    global_options = (
        f"{{\n\tadmin off\n\tskip_install_trust\n\tstorage file_system {storage}\n"
        f"\thttp_port {free_port()}\n\thttps_port {https_port}\n\tauto_https disable_redirects\n}}\n\n"
    )
    caddyfile = tmp_path / "Caddyfile"
    caddyfile.write_text(global_options + replaced(
        (CONTRIB / "Caddyfile").read_text(),
        ("chat.example.com {", f"{public} {{\n\ttls internal"),
        ("127.0.0.1:8080", f"127.0.0.1:{config.http.port}"),
        ("127.0.0.1:8081", f"127.0.0.1:{config.websocket.port}"),
    ))
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data-home"), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
           "PATH": "/usr/bin:/bin"}
    check = subprocess.run(["caddy", "validate", "--adapter", "caddyfile", "--config", str(CONTRIB / "Caddyfile")],
                           capture_output=True, text=True, env=env, timeout=60)
    assert check.returncode == 0, check.stderr
    log = tmp_path / "caddy.log"
    async with running_node(config):
        with log.open("wb") as out:
            proc = subprocess.Popen(["caddy", "run", "--adapter", "caddyfile", "--config", str(caddyfile)],
                                    stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            await wait_listening(https_port, proc, log)
            root = storage / "pki" / "authorities" / "local" / "root.crt"
            await wait_until(root.exists, 30, interval=0.05)  # the internal CA is made as the server starts
            trust = ssl.create_default_context(cafile=str(root))
            await wait_serving(public, trust, proc, log)
            await use_the_node_through(public, trust)
        finally:
            stop(proc)
