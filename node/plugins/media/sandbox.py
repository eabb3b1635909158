"""Image processing in a child process with a memory and a time limit.

Decoding is where a hostile upload bites: a few kilobytes can ask for gigabytes of pixels
or minutes of CPU. So the node never decodes an image itself: each one is processed by a
fresh `python -I images.py` process that caps its own address space (`image_memory_mb`)
and CPU time before it reads the file, and that the node kills once `image_timeout` has
passed. A bomb costs that process and nothing else; the node only reads a small JSON
answer from it. The caller bounds how many run at once (`processing_threads`).
"""

from __future__ import annotations

import base64
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from . import images
from .images import ImageRejected
from .settings import MediaSettings


async def process_image(src: Path, dst: Path, mime: str, settings: MediaSettings) -> tuple[dict[str, Any], bytes]:
    """Re-encode the image at `src` into a new file `dst` (fsynced), in a child process.

    Returns ({sha256, size, width, height}, thumbnail JPEG bytes). Raises ImageRejected
    for content that is not a valid image, or (too_large) past a limit.
    """
    job = {
        "src": str(src), "dst": str(dst), "mime": mime,
        "max_pixels": settings.max_image_pixels, "max_frames": settings.max_image_frames,
        "thumbnail_size": settings.thumbnail_size, "quality": settings.jpeg_quality,
        "memory_bytes": settings.image_memory_mb * 1024 * 1024,
        "cpu_seconds": math.ceil(settings.image_timeout) + 1,
    }
    command = [sys.executable, "-I", images.__file__, json.dumps(job)]
    with trio.move_on_after(settings.image_timeout) as timer:
        done = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False, deliver_cancel=_kill
        )
    if timer.cancelled_caught:
        raise ImageRejected(f"the image takes longer than {settings.image_timeout:g} s to process", too_large=True)
    answer = _parse(done, settings)
    if "error" in answer:
        raise ImageRejected(answer["error"], too_large=answer["too_large"])
    thumbnail = base64.b64decode(answer.pop("thumbnail"))
    return answer, thumbnail


async def _kill(process: trio.Process) -> None:
    """Cancelled (time limit, or the upload went away): the child dies at once."""
    process.kill()


def _parse(done: subprocess.CompletedProcess, settings: MediaSettings) -> dict[str, Any]:
    """The child's answer. One that died of a signal without answering went past a limit
    where Python could not report it (a decoder's own allocation, the CPU limit)."""
    try:
        return json.loads(done.stdout)
    except ValueError:
        pass
    if done.returncode < 0:
        raise ImageRejected(
            f"the image needs more than {settings.image_memory_mb} MiB or {settings.image_timeout:g} s to process",
            too_large=True,
        )
    raise ImageRejected(f"the image could not be processed (exit status {done.returncode})")
