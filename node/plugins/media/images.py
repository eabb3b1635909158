"""Images: re-encode without metadata, orientation applied to the pixels, plus a thumbnail.

Photos carry EXIF: GPS position, camera serial numbers, times. Other users must not get
it, so what the node stores (and serves, and hashes) is a re-encode made from the pixels
alone: EXIF, XMP and comments are dropped and only the ICC colour profile is kept. The
EXIF orientation tag is applied to the pixels first, so a portrait photo stays upright
once the tag is gone. The original upload is never kept.

Runs in a worker thread (decoding is CPU work and blocks); every function here is sync.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

#: Pillow's format name for each accepted image type.
FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF", "image/webp": "WEBP"}

_DROP_INFO = ("exif", "xmp", "XML:com.adobe.xmp", "comment", "comments", "dpi", "photoshop", "iptc")


class ImageRejected(Exception):
    """Not a decodable image of its detected type, or too many pixels."""

    def __init__(self, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


def process_image(
    src: Path, mime: str, *, max_pixels: int, thumbnail_size: int, quality: int
) -> tuple[bytes, bytes, dict[str, int]]:
    """Re-encode the image at `src`: (clean bytes, JPEG thumbnail bytes, {width, height}).

    Raises ImageRejected for content Pillow cannot decode as the detected format.
    """
    fmt = FORMATS.get(mime)
    if fmt is None:
        raise ImageRejected(f"{mime} images cannot be processed")
    try:
        with Image.open(src, formats=[fmt]) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(f"images are limited to {max_pixels} pixels", too_large=True)
            image.load()
            clean = _reencode(image, fmt, quality)
            first = _upright(image)
            thumb = _thumbnail(first, thumbnail_size)
            size = first.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageRejected(f"not a valid {fmt} image ({exc.__class__.__name__})") from None
    return clean, thumb, {"width": size[0], "height": size[1]}


def _upright(image: Image.Image) -> Image.Image:
    """The current frame with the EXIF orientation applied to its pixels."""
    upright = ImageOps.exif_transpose(image)
    return upright if upright is not None else image


def _clean_info(image: Image.Image) -> None:
    for key in _DROP_INFO:
        image.info.pop(key, None)


def _reencode(image: Image.Image, fmt: str, quality: int) -> bytes:
    out = io.BytesIO()
    icc = image.info.get("icc_profile")
    extra = {"icc_profile": icc} if icc else {}
    animated = getattr(image, "is_animated", False) and fmt in ("GIF", "PNG", "WEBP")
    if animated:
        # Frames of animations are kept as they are (orientation tags on animations are
        # vanishingly rare); only the metadata goes.
        _clean_info(image)
        frames = []
        durations = []
        for index in range(image.n_frames):
            image.seek(index)
            frames.append(image.copy())
            durations.append(image.info.get("duration", 100))
        for frame in frames:
            _clean_info(frame)
        options = {"save_all": True, "append_images": frames[1:], "duration": durations,
                   "loop": image.info.get("loop", 0)}
        if fmt == "WEBP":
            options["quality"] = quality
        frames[0].save(out, fmt, **options, **extra)
        image.seek(0)
        return out.getvalue()
    upright = _upright(image)
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
    """A JPEG of at most size x size: opaque (transparency over white), small, universal."""
    thumb = image.copy()
    thumb.thumbnail((size, size))
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
