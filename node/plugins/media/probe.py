"""Duration and dimensions of audio and video, where they are cheap to read.

Cheap means: from headers, without decoding a frame. Audio durations come from mutagen
(MP3, MP4/M4A, Ogg, FLAC, WAV). For MP4 and QuickTime video the `moov` box gives the
duration (`mvhd`) and the picture size (`tkhd` of the first video track); the box walk
seeks over `mdat`, so a large file costs a few small reads. WebM durations come from the
Info element, or for audio-only WebM without one (what MediaRecorder writes) from the last
block (webm.py); WebM picture sizes are not read. Nothing here raises: an unreadable header just means no metadata.

Runs in a worker thread; every function here is sync.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import Any, BinaryIO

from . import webm

log = logging.getLogger(__name__)

MAX_MOOV_BYTES = 16 * 1024 * 1024  # a moov box larger than this is not read
ISO_BMFF = frozenset({"video/mp4", "video/quicktime", "audio/mp4"})
WEBM = frozenset({"video/webm", "audio/webm"})


def probe(path: Path, mime: str) -> dict[str, Any]:
    """{"duration": seconds, "width": px, "height": px}, each only when known."""
    with open(path, "rb", buffering=64 * 1024) as f:
        return probe_file(f, path.stat().st_size, mime)


def probe_file(f: BinaryIO, size: int, mime: str) -> dict[str, Any]:
    """`probe` over a seekable file object of `size` bytes (a local file, or a staged
    object read in ranges)."""
    try:
        if mime in ISO_BMFF:
            f.seek(0)
            found = _iso_bmff(f, size)
            if found:
                return found
        if mime in WEBM:
            f.seek(0)
            return _webm(f, size, walk_clusters=mime == "audio/webm")
        if mime.startswith("audio/"):
            f.seek(0)
            return _mutagen(f)
    except Exception:  # a malformed header is the uploader's problem, not the node's
        log.debug("could not probe an upload (%s)", mime, exc_info=True)
    return {}


def _mutagen(f: BinaryIO) -> dict[str, Any]:
    import mutagen

    parsed = mutagen.File(f)
    length = getattr(getattr(parsed, "info", None), "length", None)
    return {"duration": round(float(length), 3)} if length else {}


def _webm(f: BinaryIO, size: int, walk_clusters: bool) -> dict[str, Any]:
    seconds = webm.duration(f, size, walk_clusters=walk_clusters)
    return {"duration": round(seconds, 3)} if seconds else {}


def _boxes(f: BinaryIO, end: int):
    """(type, payload offset, payload size) of the boxes between f.tell() and `end`."""
    while f.tell() + 8 <= end:
        start = f.tell()
        size, kind = struct.unpack(">I4s", f.read(8))
        header = 8
        if size == 1:
            size = struct.unpack(">Q", f.read(8))[0]
            header = 16
        elif size == 0:
            size = end - start
        if size < header or start + size > end:
            return
        yield kind, start + header, size - header
        f.seek(start + size)


def _iso_bmff(f: BinaryIO, file_size: int) -> dict[str, Any]:
    for kind, offset, size in _boxes(f, file_size):
        if kind == b"moov" and size <= MAX_MOOV_BYTES:
            f.seek(offset)
            return _moov(f.read(size))
    return {}


def _children(data: bytes, start: int = 0, end: int | None = None):
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            return
        yield kind, pos + header, pos + size
        pos += size


def _moov(data: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, start, end in _children(data):
        if kind == b"mvhd":
            version = data[start]
            if version == 1:
                timescale, duration = struct.unpack_from(">IQ", data, start + 20)
            else:
                timescale, duration = struct.unpack_from(">II", data, start + 12)
            if timescale:
                out["duration"] = round(duration / timescale, 3)
        elif kind == b"trak" and "width" not in out:
            size = _video_track_size(data, start, end)
            if size:
                out["width"], out["height"] = size
    return out


def _video_track_size(data: bytes, start: int, end: int) -> tuple[int, int] | None:
    handler = None
    dimensions = None
    for kind, s, e in _children(data, start, end):
        if kind == b"tkhd" and e - s >= 8:
            width, height = struct.unpack_from(">II", data, e - 8)  # 16.16 fixed point
            dimensions = (width >> 16, height >> 16)
        elif kind == b"mdia":
            for sub, ss, _ in _children(data, s, e):
                if sub == b"hdlr":
                    handler = data[ss + 8: ss + 12]
    if handler == b"vide" and dimensions and all(dimensions):
        return dimensions
    return None
