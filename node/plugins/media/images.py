"""Images: re-encode without metadata, orientation applied to the pixels, plus a thumbnail.

Photos carry EXIF: GPS position, camera serial numbers, times. Other users must not get
it, so what the node stores (and serves, and hashes) is a re-encode made from the pixels
alone: EXIF, XMP and comments are dropped and only the ICC colour profile is kept. The
EXIF orientation tag is applied to the pixels first, so a portrait photo stays upright
once the tag is gone. The original upload is never kept.

A small file can describe a huge amount of pixels (a 1.4 KB GIF with a 3000x3000 canvas
and 60 one-pixel frames decodes into 2 GiB), so the budget counts width x height x frames
and the number of frames is capped, both before anything is decoded. What the budget
cannot foresee is bounded by where this runs: the node starts this file as its own
process (`python -I images.py JOB`, see sandbox.py) that first limits its own address
space and CPU time, so a bomb ends that process, never the node.

Every function here is sync and imports nothing of the node: the child process starts
with Pillow and the standard library only.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import resource
import sys
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

#: Pillow's format name for each accepted image type.
FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF", "image/webp": "WEBP"}

MEMORY_MARGIN = 64 * 1024 * 1024  # an error this close to the memory limit is taken as hitting it

_DROP_INFO = ("exif", "xmp", "XML:com.adobe.xmp", "comment", "comments", "dpi", "photoshop", "iptc")


class ImageRejected(Exception):
    """Not a decodable image of its detected type, or more than the limits allow."""

    def __init__(self, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


def process_image(
    src: Path, mime: str, *, max_pixels: int, max_frames: int, thumbnail_size: int, quality: int
) -> tuple[bytes, bytes, dict[str, int]]:
    """Re-encode the image at `src`: (clean bytes, JPEG thumbnail bytes, {width, height}).

    Raises ImageRejected for content Pillow cannot decode as the detected format, and
    (too_large) for more than `max_frames` frames or `max_pixels` pixels in all frames.
    """
    fmt = FORMATS.get(mime)
    if fmt is None:
        raise ImageRejected(f"{mime} images cannot be processed")
    try:
        with Image.open(src, formats=[fmt]) as image:
            frames = _check_budget(image, max_pixels, max_frames)
            image.load()
            upright = _upright(image) if frames == 1 else image
            clean = _reencode(image, upright, fmt, quality, frames)
            image.seek(0)
            first = _upright(image) if frames > 1 else upright
            thumb = _thumbnail(first, thumbnail_size)
            size = first.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageRejected(f"not a valid {fmt} image ({exc.__class__.__name__}: {exc})") from exc
    return clean, thumb, {"width": size[0], "height": size[1]}


def _check_budget(image: Image.Image, max_pixels: int, max_frames: int) -> int:
    """The number of frames, once width x height x frames is known to fit the budget.

    Pillow counts frames from the headers (GIF block structure, APNG's acTL, WebP's
    demuxer) without decoding pixels, so this is cheap even for a bomb.
    """
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(f"images are limited to {max_pixels} pixels", too_large=True)
    frames = getattr(image, "n_frames", 1) if getattr(image, "is_animated", False) else 1
    if frames > max_frames:
        raise ImageRejected(f"animations are limited to {max_frames} frames", too_large=True)
    if width * height * frames > max_pixels:
        raise ImageRejected(
            f"images are limited to {max_pixels} pixels (width x height x frames: {width}x{height}x{frames})",
            too_large=True,
        )
    return frames


def _upright(image: Image.Image) -> Image.Image:
    """The current frame with the EXIF orientation applied to its pixels."""
    upright = ImageOps.exif_transpose(image)
    return upright if upright is not None else image


def _clean_info(image: Image.Image) -> None:
    for key in _DROP_INFO:
        image.info.pop(key, None)


def _reencode(image: Image.Image, upright: Image.Image, fmt: str, quality: int, frames: int) -> bytes:
    out = io.BytesIO()
    icc = image.info.get("icc_profile")
    extra = {"icc_profile": icc} if icc else {}
    if frames > 1 and fmt in ("GIF", "PNG", "WEBP"):
        # Frames of animations are kept as they are (orientation tags on animations are
        # vanishingly rare); only the metadata goes. The encoder walks the frames of the
        # image itself: no list of copies of every frame.
        loop = image.info.get("loop", 0)
        durations = []
        for index in range(frames):
            image.seek(index)
            durations.append(image.info.get("duration", 100))
        image.seek(0)
        _clean_info(image)
        options = {"save_all": True, "duration": durations, "loop": loop}
        if fmt == "WEBP":
            options["quality"] = quality
        image.save(out, fmt, **options, **extra)
        return out.getvalue()
    _clean_info(upright)
    if fmt == "JPEG":
        if upright.mode not in ("RGB", "L", "CMYK"):
            upright = upright.convert("RGB")
        upright.save(out, fmt, quality=quality, **extra)
    elif fmt == "WEBP":
        upright.save(out, fmt, quality=quality, **extra)
    else:
        upright.save(out, fmt, **extra)
    return out.getvalue()


def _thumbnail(image: Image.Image, size: int) -> bytes:
    """A JPEG of at most size x size: opaque (transparency over white), small, universal.

    Made by reducing the frame into a new small image, never by copying it whole first."""
    width, height = image.size
    scale = min(1.0, size / max(width, height))
    box = (max(1, round(width * scale)), max(1, round(height * scale)))
    thumb = image.resize(box, Image.Resampling.BICUBIC, reducing_gap=2.0) if box != image.size else image.copy()
    if thumb.mode in ("RGBA", "LA", "P", "PA"):
        thumb = thumb.convert("RGBA")
        background = Image.new("RGB", thumb.size, (255, 255, 255))
        background.paste(thumb, mask=thumb.getchannel("A"))
        thumb = background
    elif thumb.mode != "RGB":
        thumb = thumb.convert("RGB")
    out = io.BytesIO()
    thumb.save(out, "JPEG", quality=80)
    return out.getvalue()


# -- the child process --------------------------------------------------------------------


def limit_resources(memory_bytes: int, cpu_seconds: int) -> None:
    """Cap this process's address space and CPU time before it touches untrusted bytes."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_job(job: dict) -> dict:
    """Process one image as `job` describes; the clean re-encode goes to job["dst"], fsynced.

    Returns what the node needs: {sha256, size, width, height, thumbnail (base64)}, or
    {error, too_large} for a refusal."""
    try:
        clean, thumb, meta = process_image(
            Path(job["src"]), job["mime"], max_pixels=job["max_pixels"], max_frames=job["max_frames"],
            thumbnail_size=job["thumbnail_size"], quality=job["quality"],
        )
    except ImageRejected as exc:
        if not exc.too_large and _came_near(job["memory_bytes"]):
            return _out_of_memory(job)
        return {"error": str(exc), "too_large": exc.too_large}
    except MemoryError:
        return _out_of_memory(job)
    with os.fdopen(os.open(job["dst"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:  # as store.py
        f.write(clean)
        f.flush()
        os.fsync(f.fileno())
    return {"sha256": hashlib.sha256(clean).hexdigest(), "size": len(clean), **meta,
            "thumbnail": base64.b64encode(thumb).decode()}


def _came_near(memory_bytes: int) -> bool:
    """Whether this process's address space came within MEMORY_MARGIN of its limit.

    Pillow reports a failed allocation in C as MemoryError on most paths but as a decoder
    or quantizer error on some; an error after coming that close is taken as the limit."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmPeak:"):
                return int(line.split()[1]) * 1024 > memory_bytes - MEMORY_MARGIN
    return False


def _out_of_memory(job: dict) -> dict:
    return {"error": f"the image needs more than {job['memory_bytes'] >> 20} MiB to process", "too_large": True}


def main(argv: list[str]) -> int:
    """`python -I images.py '<job JSON>'`: limits first, then the job; the answer on stdout."""
    job = json.loads(argv[1])
    limit_resources(job["memory_bytes"], job["cpu_seconds"])
    sys.stdout.write(json.dumps(run_job(job)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
