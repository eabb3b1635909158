"""The WebSocket layer alone: trio-websocket's server versus node/core/websocket.py.

Each server echoes text messages and nothing else; 50 connections keep one message in
flight each (bench/rawws.py, pinned to the other CPU), then 2,000 idle connections are
opened to weigh them. This is the measurement behind the chat socket's choice of layer.

    python -m bench.ws_echo [--runs 3] [--seconds 5] [--baseline DIR]

`--baseline DIR` adds the node layer of another checkout (an earlier commit), interleaved.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

from bench.rawws import Loop
from bench.run import cpu_seconds, free_port, pin, rss_kib

MESSAGE = b'{"type":"send","chat":"385591234567","client_msg_id":"c1","text":"' + b"x" * 60 + b'"}'


async def serve_trio_websocket(port: int) -> None:
    from trio_websocket import ConnectionClosed, serve_websocket

    async def handler(request):
        ws = await request.accept()
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except ConnectionClosed:
            pass

    await serve_websocket(handler, "127.0.0.1", port, ssl_context=None, message_queue_size=4)


async def serve_node_layer(port: int) -> None:
    import trio

    from node.core.websocket import ConnectionClosed, read_upgrade

    async def handler(stream):
        async with stream:
            upgrade = await read_upgrade(stream, timeout=10)
            if upgrade is None:
                return
            ws = await upgrade.accept(max_message_size=1 << 20)
            try:
                while True:
                    await ws.send_message(await ws.get_message())
            except ConnectionClosed:
                pass

    await trio.serve_tcp(handler, port, host="127.0.0.1")


SERVERS = {"trio-websocket": serve_trio_websocket, "node.core.websocket": serve_node_layer}


def serve(name: str, port: int) -> None:
    import trio

    trio.run(SERVERS[name], port)


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("echo server did not start")


def measure(name: str, seconds: float, baseline: str | None = None) -> dict:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.path.abspath(baseline)} if baseline else None
    server = "node.core.websocket" if baseline else name
    proc = subprocess.Popen([sys.executable, "-m", "bench.ws_echo", "--serve", server, "--port", str(port)],
                            preexec_fn=lambda: pin(0), env=env, cwd=os.path.abspath(baseline) if baseline else None)
    try:
        wait_listening(port)
        url = f"ws://127.0.0.1:{port}/ws"
        loop = Loop()
        echoes = {"n": 0}

        def on_text(conn, payload: bytes) -> None:
            echoes["n"] += 1
            conn.send_text(MESSAGE)

        for _ in range(50):
            loop.connect(url, on_text).send_text(MESSAGE)
        loop.run(time.perf_counter() + 1.0)
        c0, n0, t0 = cpu_seconds(proc.pid), echoes["n"], time.perf_counter()
        loop.run(t0 + seconds)
        c1, n1, t1 = cpu_seconds(proc.pid), echoes["n"], time.perf_counter()
        before = rss_kib(proc.pid)
        for _ in range(2000):
            loop.connect(url, lambda conn, payload: None)
        loop.run(time.perf_counter() + 2.0)
        after = rss_kib(proc.pid)
        loop.close_all()
        return {"echoes_per_s": (n1 - n0) / (t1 - t0), "cpu_us_per_echo": (c1 - c0) / (n1 - n0) * 1e6,
                "kib_per_idle_connection": (after - before) / 2000}
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--serve", choices=sorted(SERVERS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--baseline", default=None, help="also run the node layer of this checkout, in turn")
    parser.add_argument("--layers", default=",".join(SERVERS), help="which layers to run")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    pin(1)
    names = args.layers.split(",") + ([f"node.core.websocket, {args.baseline}"] if args.baseline else [])
    results: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(args.runs):
        for name in names:  # interleaved, so drift on a noisy machine hits both alike
            results[name].append(measure(name, args.seconds, args.baseline if name not in SERVERS else None))
            print(name, {k: round(v, 1) for k, v in results[name][-1].items()}, flush=True)
    print(f"\n| layer (median of {args.runs} runs) | echoes/s | server CPU per echo | KiB per idle connection |")
    print("| --- | --- | --- | --- |")
    for name, runs in results.items():
        med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        print(f"| {name} | {med['echoes_per_s']:,.0f} | {med['cpu_us_per_echo']:.0f} µs | {med['kib_per_idle_connection']:.1f} |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
