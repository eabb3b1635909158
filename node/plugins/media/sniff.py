"""What an upload is, judged from its first bytes (magic numbers), never from its name
or the client's Content-Type: both are the uploader's claim, the bytes are the fact.

`filetype` knows the signatures of the common image, audio, video, document and archive
formats. Content it does not recognise is `text/plain` if its head is clean UTF-8 text,
else `application/octet-stream` (refused unless an operator allows it).

`filetype` calls every WebM `video/webm`; one whose tracks are all audio (a voice note
from a browser's MediaRecorder: Opus in WebM) is `audio/webm`. Ogg is `audio/ogg`.
"""

from __future__ import annotations

import filetype

from . import webm

#: How much of an upload is read before deciding what it is (filetype looks at 8 KiB).
SNIFF_BYTES = 8192

#: filetype's names for some types differ from the ones browsers expect.
_CANONICAL = {
    "audio/x-wav": "audio/wav",
    "audio/x-flac": "audio/flac",
    "image/apng": "image/png",  # an animated PNG is a PNG to every browser
    "video/x-m4v": "video/mp4",
}

_TEXT_CONTROLS = frozenset(range(32)) - {9, 10, 12, 13}


def detect(head: bytes) -> str:
    """The MIME type of content starting with `head` (at least SNIFF_BYTES unless shorter)."""
    kind = filetype.guess(head)
    if kind is not None:
        mime = _CANONICAL.get(kind.mime, kind.mime)
        if mime == "video/webm" and webm.track_types(head) == {webm.AUDIO_TRACK}:
            return "audio/webm"
        return mime
    return "text/plain" if _looks_like_text(head) else "application/octet-stream"


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # the head may end inside a multi-byte character: only that tail may fail
        if exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")
    return not any(ord(c) in _TEXT_CONTROLS for c in text)


#: Types that a voice note recorded in a browser comes in (MediaRecorder writes WebM or
#: MP4 containers), accepted in `audio` messages as well as in `video` ones.
AUDIO_CONTAINERS = frozenset({"video/webm", "video/mp4", "audio/webm"})

#: A type missing from every allow-list takes the category of its container's type, so a
#: config written before audio-only WebM was told apart still takes browser voice notes.
CONTAINER_OF = {"audio/webm": "video/webm"}


def kind_accepts(kind: str, category: str, mime: str) -> bool:
    """Whether a message of `kind` may carry media of `category` / `mime`."""
    if kind == "file":
        return True
    if kind == "audio":
        return category == "audio" or mime in AUDIO_CONTAINERS
    return kind == category
