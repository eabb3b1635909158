"""WebM (Matroska) headers: which kinds of track a file has, and how long it lasts.

A voice note recorded by a browser's MediaRecorder is a WebM with one Opus track, and
`filetype` calls every WebM `video/webm`. The Tracks element sits in the first few hundred
bytes, so the sniffed head says whether there is any track but audio (`track_types`).

The same recordings carry no Duration: MediaRecorder writes as it records, with the
Segment and its Clusters of unknown size. `duration` reads the Info element's Duration
when there is one; otherwise, when asked to, it walks the Clusters and takes the last
block's time (plus one frame). It reads only element headers and seeks over payloads.

EBML in short: an element is an ID (1-4 bytes, length marker kept), a size (1-8 bytes,
length marker removed; all ones means "unknown") and the payload.
"""

from __future__ import annotations

import struct
from typing import Protocol


class SeekableFile(Protocol):
    """What probing reads through: a local file, or a staged object read in ranges
    (node/plugins/media/s3store.py `RangeReader`)."""

    def read(self, size: int = -1, /) -> bytes: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def tell(self) -> int: ...

    def close(self) -> None: ...


EBML_HEADER = 0x1A45DFA3
SEGMENT = 0x18538067
INFO = 0x1549A966
TIMECODE_SCALE = 0x2AD7B1
DURATION = 0x4489
TRACKS = 0x1654AE6B
TRACK_ENTRY = 0xAE
TRACK_TYPE = 0x83
CLUSTER = 0x1F43B675
CLUSTER_TIMECODE = 0xE7
BLOCK_GROUP = 0xA0
BLOCK = 0xA1
SIMPLE_BLOCK = 0xA3

VIDEO_TRACK, AUDIO_TRACK = 1, 2

#: Elements whose children are read in line (the others are skipped by their size).
_ENTERED = frozenset({SEGMENT, CLUSTER, BLOCK_GROUP})
MAX_INFO_BYTES = 64 * 1024


def _vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int | None, int] | None:
    """(value, length) of the variable-length integer at `pos`; value None for an
    unknown size; None if `data` ends first or the first byte is not valid."""
    if pos >= len(data) or data[pos] == 0:
        return None
    first = data[pos]
    length = 8 - first.bit_length() + 1
    if pos + length > len(data):
        return None
    value = first if keep_marker else first & ((1 << (8 - length)) - 1)
    for byte in data[pos + 1: pos + length]:
        value = (value << 8) | byte
    if not keep_marker and value == (1 << (7 * length)) - 1:
        return None, length
    return value, length


def _header(data: bytes, pos: int) -> tuple[int, int | None, int] | None:
    """(id, size or None if unknown, payload offset) of the element at `pos`."""
    ident = _vint(data, pos, keep_marker=True)
    if ident is None or ident[0] is None or ident[1] > 4:  # (with the marker kept, never an unknown size)
        return None
    size = _vint(data, pos + ident[1], keep_marker=False)
    if size is None:
        return None
    return ident[0], size[0], pos + ident[1] + size[1]


def track_types(head: bytes) -> frozenset[int] | None:
    """The TrackType values (1 video, 2 audio, ...) of the WebM starting with `head`, or
    None if its Tracks element is not whole in `head` (or it is not a WebM at all)."""
    found = _header(head, 0)
    if found is None or found[0] != EBML_HEADER or found[1] is None:
        return None
    pos = found[2] + found[1]
    found = _header(head, pos)
    if found is None or found[0] != SEGMENT:
        return None
    pos = found[2]
    while (found := _header(head, pos)) is not None:
        ident, size, body = found
        if ident == CLUSTER or size is None or body + size > len(head):
            return None  # media data came first, or Tracks does not fit in the head
        if ident == TRACKS:
            return _types_in(head, body, body + size)
        pos = body + size
    return None


def _types_in(data: bytes, pos: int, end: int) -> frozenset[int] | None:
    types: set[int] = set()
    entries = 0
    while pos < end and (found := _header(data, pos)) is not None:
        ident, size, body = found
        if size is None or body + size > end:
            return None
        if ident == TRACK_ENTRY:
            entries += 1
            child = body
            while child < body + size and (sub := _header(data, child)) is not None:
                if sub[1] is None or sub[2] + sub[1] > body + size:
                    return None
                if sub[0] == TRACK_TYPE and 1 <= sub[1] <= 8:
                    types.add(int.from_bytes(data[sub[2]: sub[2] + sub[1]], "big"))
                child = sub[2] + sub[1]
        pos = body + size
    return frozenset(types) if entries and len(types) else None


def duration(f: SeekableFile, file_size: int, *, walk_clusters: bool) -> float | None:
    """Seconds, from Info's Duration, or (if `walk_clusters`) from the last block's time."""
    scale = 1_000_000  # ns per timecode unit, unless Info says otherwise
    cluster_time = 0
    last: int | None = None
    previous: int | None = None
    found = _read_header(f)
    if found is None or found[0] != EBML_HEADER or found[1] is None:
        return None
    f.seek(found[1], 1)
    end = file_size
    while f.tell() < end:
        found = _read_header(f)
        if found is None:
            break  # a truncated tail: what came before still counts
        ident, size = found
        if ident == SEGMENT and size is not None:
            end = min(end, f.tell() + size)
        if ident in _ENTERED:
            if ident == CLUSTER and not walk_clusters:
                return None
            continue
        if size is None:
            return None  # an unknown size on an element that cannot have one
        if ident == INFO:
            if size > MAX_INFO_BYTES:
                return None
            scale, seconds = _info(f.read(size), scale)
            if seconds is not None:
                return seconds
        elif ident == CLUSTER_TIMECODE and size <= 8:
            cluster_time = int.from_bytes(f.read(size), "big")
        elif ident in (SIMPLE_BLOCK, BLOCK):
            start = f.tell()
            block = f.read(min(size, 11))
            track = _vint(block, 0, keep_marker=False)
            if track is not None and track[0] is not None and len(block) >= track[1] + 2:
                (relative,) = struct.unpack_from(">h", block, track[1])
                at = cluster_time + relative
                if last is None or at > last:
                    previous, last = last, at
            f.seek(start + size)
        else:
            f.seek(size, 1)
    if last is None:
        return None
    frame = last - previous if previous is not None else 0
    return (last + frame) * scale / 1e9


def _info(data: bytes, scale: int) -> tuple[int, float | None]:
    """(timecode scale, seconds or None) from an Info payload."""
    raw_duration = None
    pos = 0
    while (found := _header(data, pos)) is not None:
        ident, size, body = found
        if size is None or body + size > len(data):
            break
        value = data[body: body + size]
        if ident == TIMECODE_SCALE and 1 <= size <= 8:
            scale = int.from_bytes(value, "big") or scale
        elif ident == DURATION and size in (4, 8):
            raw_duration = struct.unpack(">f" if size == 4 else ">d", value)[0]
        pos = body + size
    seconds = raw_duration * scale / 1e9 if raw_duration and raw_duration > 0 else None
    return scale, seconds


def _read_header(f: SeekableFile) -> tuple[int, int | None] | None:
    """(id, size) of the element at the file's position, which is left at its payload."""
    start = f.tell()
    data = f.read(12)
    found = _header(data, 0)
    if found is None:
        return None
    f.seek(start + found[2])
    return found[0], found[1]
