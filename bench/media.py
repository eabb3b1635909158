"""Media throughput: upload and download a 50 MB file, and the node's memory meanwhile.

The node runs as a subprocess pinned to CPU 0 (as in bench/run.py); this process, the
client, is pinned to CPU 1. The file is a WAV (a real header, random samples, so
nothing compresses), sent as a stream of 1 MiB chunks and read back as a stream; neither
side holds it whole. The node's memory is sampled from /proc every 5 ms during each
phase (peak VmRSS), and its VmHWM (the kernel's high-water mark) is read before and
after. Figures are medians over the runs; each run uploads a new file.

Both content stores are measured (`--store local`, `--store s3`, or both, the default): the
local directory, and an S3-compatible object store, a private SeaweedFS started for the
run (tests/s3server.py, the `weed` binary of the test extras) on loopback.

    python -m bench.media [--runs 3] [--mb 50] [--store both]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import tempfile
import threading
import time
from pathlib import Path

import httpx
import trio

from bench.run import PASSWORD, RESULTS, cpu_seconds, node_process, pin
from node.client import ChatClient

CHUNK = 1024 * 1024


def proc_status(pid: int, field: str) -> int:
    """A VmRSS/VmHWM-style field of /proc/<pid>/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field}")


class RssSampler:
    """Peak VmRSS of a process, sampled every `interval` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, proc_status(self.pid, "VmRSS"))
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = proc_status(self.pid, "VmRSS")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, proc_status(self.pid, "VmRSS"))


def wav_header(data_bytes: int, rate: int = 48000) -> bytes:
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 2, rate, rate * 4, 4, 16)
            + b"data" + struct.pack("<I", data_bytes))


async def one_run(url: str, pid: int, size: int, name: str) -> dict:
    block = os.urandom(CHUNK)
    header = wav_header(size - 44)

    async def body():
        yield header
        sent = 44
        while sent < size:
            piece = block[: min(CHUNK, size - sent)]
            sent += len(piece)
            yield piece

    async with ChatClient(url, timeout=300) as client:
        await client.register(name, PASSWORD)
        await client.login(name, PASSWORD)
        rss_before = proc_status(pid, "VmRSS")
        hwm_before = proc_status(pid, "VmHWM")
        with RssSampler(pid) as up:
            cpu = cpu_seconds(pid)
            start = time.perf_counter()
            media = await client.upload(body(), name="bench.wav")
            upload_s = time.perf_counter() - start
            upload_cpu = cpu_seconds(pid) - cpu
        assert media["size"] == size, media
        hwm_upload = proc_status(pid, "VmHWM")
        received = 0
        with RssSampler(pid) as down:
            cpu = cpu_seconds(pid)
            start = time.perf_counter()
            async with client._http.stream("GET", f"/api/media/{media['id']}", headers=client._bearer()) as response:
                response.raise_for_status()
                async for chunk in response.aiter_raw():
                    received += len(chunk)
            download_s = time.perf_counter() - start
            download_cpu = cpu_seconds(pid) - cpu
        assert received == size, received
        hwm_download = proc_status(pid, "VmHWM")
    mb = size / 1e6
    return {
        "upload_mb_s": round(mb / upload_s, 1),
        "download_mb_s": round(mb / download_s, 1),
        "node_cpu_s_upload": round(upload_cpu, 2),  # the node's user+system CPU (threads included)
        "node_cpu_s_download": round(download_cpu, 2),
        "rss_before_mib": round(rss_before / 1024, 1),
        "peak_rss_upload_mib": round(up.peak / 1024, 1),
        "peak_rss_download_mib": round(down.peak / 1024, 1),
        "vmhwm_before_mib": round(hwm_before / 1024, 1),
        "vmhwm_after_upload_mib": round(hwm_upload / 1024, 1),
        "vmhwm_after_download_mib": round(hwm_download / 1024, 1),
    }


def measure(store: str, runs_wanted: int, size: int) -> list[dict]:
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        limit = max(size * 2, 64 * 1024 * 1024)
        extra = f"[plugins.media]\nmax_audio_bytes = {limit}\n"
        server = None
        if store == "s3":
            import sys

            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from s3server import S3Server

            server = S3Server().start()
            settings = server.settings("bench/", create_bucket=True, bucket="bench")
            extra += 'store = "s3"\n[plugins.media.s3]\n' + "".join(
                f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
        try:
            with node_process(Path(tmp), extra) as (proc, url, _ws):
                pin(1)  # after the node started: it inherits this process's CPUs and pins itself to 0
                httpx.get(f"{url}/healthz").raise_for_status()
                for i in range(runs_wanted):
                    result = trio.run(one_run, url, proc.pid, size, f"media{i}")
                    runs.append(result)
                    print(store, json.dumps(result))
        finally:
            if server is not None:
                server.destroy()
            os.sched_setaffinity(0, range(os.cpu_count() or 1)) if hasattr(os, "sched_setaffinity") else None
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mb", type=float, default=50.0, help="file size in MB (10^6 bytes)")
    parser.add_argument("--store", choices=("local", "s3", "both"), default="both")
    args = parser.parse_args()
    size = int(args.mb * 1_000_000)
    report: dict = {"file_mb": args.mb, "load_before": os.getloadavg(),
                    "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None, "stores": {}}
    for store in (("local", "s3") if args.store == "both" else (args.store,)):
        runs = measure(store, args.runs, size)
        report["stores"][store] = {"runs": runs,
                                   "median": {key: statistics.median(r[key] for r in runs) for key in runs[0]}}
    report["load_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "media.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({store: r["median"] for store, r in report["stores"].items()}, indent=2))
    print("load average before / after:", report["load_before"], report["load_after"])


if __name__ == "__main__":
    main()
