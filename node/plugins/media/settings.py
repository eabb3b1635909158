"""`[plugins.media]`: where media lives, what may be uploaded, how big, and when it goes."""

from __future__ import annotations

import attrs

from .sniff import CONTAINER_OF

MIB = 1024 * 1024

#: The four categories of media, in the order a detected type is looked up in them.
CATEGORIES = ("image", "audio", "video", "file")


def _positive(_instance: object, attribute: attrs.Attribute, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name}: must be > 0, got {value!r}")


def _not_negative(_instance: object, attribute: attrs.Attribute, value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name}: must be >= 0, got {value!r}")


def _mime_list(_instance: object, attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    for mime in value:
        if not isinstance(mime, str) or mime.count("/") != 1:
            raise ValueError(f"{attribute.name}: {mime!r} is not a MIME type")


def _store_kind(_instance: object, attribute: attrs.Attribute, value: str) -> None:
    if value not in ("local", "s3"):
        raise ValueError(f"{attribute.name}: must be \"local\" or \"s3\", got {value!r}")


def _addressing(_instance: object, attribute: attrs.Attribute, value: str) -> None:
    if value not in ("path", "virtual", "auto"):
        raise ValueError(f"{attribute.name}: must be \"path\", \"virtual\" or \"auto\", got {value!r}")


def _part_size(_instance: object, attribute: attrs.Attribute, value: int) -> None:
    if not 5 * MIB <= value <= 5 * 1024 * MIB:
        raise ValueError(f"{attribute.name}: S3 parts are 5 MiB to 5 GiB, got {value!r}")


@attrs.frozen
class S3Settings:
    """`[plugins.media.s3]`: an S3-compatible object store (store = "s3")."""

    endpoint: str = ""  # e.g. "https://s3.eu-central-1.amazonaws.com" or "http://127.0.0.1:8333"; "" is AWS's
    bucket: str = ""  # required
    region: str = "us-east-1"
    prefix: str = ""  # keys start with this (share a bucket between installations: "chatnode/")
    access_key: str = ""  # "" takes AWS_ACCESS_KEY_ID (and the rest of the standard AWS chain)
    secret_key: str = ""  # "" takes AWS_SECRET_ACCESS_KEY
    addressing: str = attrs.field(default="path", validator=_addressing)  # "path", "virtual" or "auto"
    create_bucket: bool = False  # create the bucket at start-up if it is missing
    part_size: int = attrs.field(default=8 * MIB, validator=_part_size)  # multipart part, and what an upload buffers
    timeout: float = attrs.field(default=10.0, validator=_positive)  # seconds to connect, and per read
    attempts: int = attrs.field(default=3, validator=_positive)  # tries per request (the client's retries)
    connections: int = attrs.field(default=32, validator=_positive)  # connection pool of the node's client
    presigned_downloads: bool = False  # answer downloads with a redirect to a presigned URL of the store
    presign_ttl: float = attrs.field(default=300.0, validator=_positive)  # seconds such a URL lives
    presign_endpoint: str = ""  # the address clients reach the store (or a CDN) at; default `endpoint`


@attrs.frozen
class MediaSettings:
    """The media plugin's settings; every field has a default (docs/media.md)."""

    store: str = attrs.field(default="local", validator=_store_kind)  # "local" (dir) or "s3" ([plugins.media.s3])
    dir: str = "media"  # local store and temporary files, relative to node.data_dir unless absolute
    s3: S3Settings = attrs.Factory(S3Settings)
    image_types: tuple[str, ...] = attrs.field(
        default=("image/jpeg", "image/png", "image/gif", "image/webp"), validator=_mime_list)
    audio_types: tuple[str, ...] = attrs.field(
        default=("audio/mpeg", "audio/mp4", "audio/aac", "audio/ogg", "audio/webm", "audio/wav", "audio/flac"),
        validator=_mime_list)
    video_types: tuple[str, ...] = attrs.field(
        default=("video/mp4", "video/webm", "video/quicktime"), validator=_mime_list)
    file_types: tuple[str, ...] = attrs.field(
        default=(
            "application/pdf", "text/plain", "application/zip", "application/gzip", "application/x-7z-compressed",
            "application/x-tar", "application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            "application/vnd.oasis.opendocument.text", "application/vnd.oasis.opendocument.spreadsheet",
            "application/vnd.oasis.opendocument.presentation", "application/epub+zip", "application/rtf",
        ),
        validator=_mime_list,
    )
    max_image_bytes: int = attrs.field(default=20 * MIB, validator=_positive)
    max_audio_bytes: int = attrs.field(default=50 * MIB, validator=_positive)
    max_video_bytes: int = attrs.field(default=200 * MIB, validator=_positive)
    max_file_bytes: int = attrs.field(default=100 * MIB, validator=_positive)
    max_image_pixels: int = attrs.field(default=50_000_000, validator=_positive)  # width x height x frames
    max_image_frames: int = attrs.field(default=1000, validator=_positive)  # frames of an animation
    thumbnail_size: int = attrs.field(default=320, validator=_positive)  # longest side, pixels
    jpeg_quality: int = attrs.field(default=90, validator=attrs.validators.and_(attrs.validators.ge(1),
                                                                                attrs.validators.le(95)))
    processing_threads: int = attrs.field(default=2, validator=_positive)  # images processed at once
    image_memory_mb: int = attrs.field(default=1024, validator=attrs.validators.ge(128))  # per processing process
    image_timeout: float = attrs.field(default=30.0, validator=_positive)  # seconds to process one image
    max_user_bytes: int = attrs.field(default=1024 * MIB, validator=_not_negative)  # kept uploads per user; 0: no limit
    max_user_items: int = attrs.field(default=10_000, validator=_not_negative)  # kept uploads per user; 0: no limit
    user_upload_bytes_per_hour: int = attrs.field(default=512 * MIB, validator=_not_negative)  # per user; 0: no limit
    min_free_disk_bytes: int = attrs.field(default=1024 * MIB, validator=_not_negative)  # uploads stop below; 0: off
    upload_idle_timeout: float = attrs.field(default=60.0, validator=_positive)  # seconds without data
    gc_grace: float = attrs.field(default=86400.0, validator=_not_negative)  # seconds an upload waits for a message
    gc_interval: float = attrs.field(default=600.0, validator=_positive)  # seconds between collections
    pending_timeout: float = attrs.field(default=600.0, validator=_positive)  # seconds a send in flight protects
    signed_urls: bool = True  # GET /api/media/{id}/signed and ?exp=&sig= downloads
    signed_url_ttl: float = attrs.field(default=3600.0, validator=_positive)  # seconds; URLs live ttl/2 to ttl

    def __attrs_post_init__(self) -> None:
        if self.store == "s3" and not self.s3.bucket:
            raise ValueError("s3.bucket: required with store = \"s3\"")

    def category_of(self, mime: str) -> str | None:
        """The first category whose allow-list has `mime`, else that of its container's
        type (audio/webm: video/webm), or None (refused)."""
        for category in CATEGORIES:
            if mime in getattr(self, f"{category}_types"):
                return category
        container = CONTAINER_OF.get(mime)
        return self.category_of(container) if container else None

    def limit_of(self, category: str) -> int:
        return getattr(self, f"max_{category}_bytes")

    @property
    def max_upload_bytes(self) -> int:
        return max(self.limit_of(category) for category in CATEGORIES)
