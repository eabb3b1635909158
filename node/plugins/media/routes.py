"""The media HTTP API: upload, download (ranges, ETags), metadata, thumbnails, signed URLs.

    POST /api/media?name=<file name>   raw body -> 201 {"media": {...}}
    GET  /api/media/{id}               the bytes (Range, If-None-Match, If-Range)
    GET  /api/media/{id}/thumbnail     a JPEG thumbnail (images only)
    GET  /api/media/{id}/info          {"media": {...}}
    GET  /api/media/{id}/signed        {"url", "thumbnail_url", "expires"}

Uploads stream to the content store's staging as they arrive (images: to a bounded local
temp file, for processing); downloads stream from the store; neither is ever held in
memory whole. See docs/media.md.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import trio

from ... import ChatError, PluginContext, Request, Response, Route, json_response
from . import records
from .quota import Quotas
from .ranges import Unsatisfiable, etag_matches, if_range_allows, parse_range
from .service import MediaService, now_ms
from .sniff import SNIFF_BYTES, detect
from .store import CONTENT, THUMBNAIL, ContentStore, FileUpload, MissingContent, StoreUnavailable, Upload

log = logging.getLogger(__name__)

MAX_NAME_CHARS = 255
IMMUTABLE = "private, max-age=31536000, immutable"


class _Body:
    """The request body, chunk by chunk, with an idle timeout between chunks."""

    def __init__(self, body: Any, idle_timeout: float) -> None:
        self._body = body
        self._idle = idle_timeout

    async def next(self) -> bytes | None:
        with trio.move_on_after(self._idle):
            try:
                return await self._body.__anext__()
            except StopAsyncIteration:
                return None
        raise ChatError("bad_request", f"no data for {self._idle:g} seconds: upload abandoned", status=408)

    async def drain(self) -> None:
        """Read the rest of the body and throw it away.

        hypercorn (0.18) stalls a connection whose app answered before reading the whole
        body: the unread chunks fill the app's queue and nothing empties it. So a refused
        upload is read to its end (or until it stalls) before the answer goes out. It
        costs bandwidth, never memory or disk.
        """
        try:
            while await self.next() is not None:
                pass
        except ChatError:
            pass

    async def head(self, size: int) -> bytes:
        """At least `size` bytes from the start (fewer only if the body is shorter)."""
        head = bytearray()
        while len(head) < size:
            chunk = await self.next()
            if chunk is None:
                break
            head += chunk
        return bytes(head)


def clean_name(raw: str | None) -> str | None:
    """A file name to show and to offer on download: no path, no control characters."""
    if not raw:
        return None
    if len(raw) > MAX_NAME_CHARS:
        raise ChatError("bad_request", f"'name' is at most {MAX_NAME_CHARS} characters")
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    if not name or name in (".", ".."):
        return None
    return name


def media_routes(ctx: PluginContext, plugin: Any) -> list[Route]:
    """The routes of `plugin` (a MediaPlugin): they are collected before the plugin's
    `startup` made its service and signer, so each request looks them up."""
    settings = ctx.settings

    def service_or_503() -> MediaService:
        if plugin.service is None:
            raise ChatError("unavailable", "media is starting")
        return plugin.service

    def quotas() -> Quotas:
        if plugin.quotas is None:
            raise ChatError("unavailable", "media is starting")
        return plugin.quotas

    async def item_or_404(media_id: str) -> dict[str, Any]:
        service = service_or_503()
        item = await service.get(int(media_id)) if media_id.isdigit() and len(media_id) <= 20 else None
        if item is None:
            raise ChatError("not_found", "no such media")
        return item

    async def authorized_item(request: Request, media_id: str, variant: str) -> tuple[dict[str, Any], str]:
        """The item, if the signature or the bearer token allows it, and the Cache-Control
        to send. Who is asking is settled first, so strangers learn nothing of what exists."""
        service = service_or_503()
        exp, sig = request.args.get("exp"), request.args.get("sig")
        signer = await plugin.get_signer() if sig is not None else None
        if signer is not None and sig is not None and media_id.isdigit() and len(media_id) <= 20:
            now = now_ms()
            if exp is not None and signer.verify(int(media_id), variant, exp, sig, now):
                return await item_or_404(media_id), f"private, max-age={max(0, (int(exp) - now) // 1000)}, immutable"
            if "Authorization" not in request.headers:
                raise ChatError("forbidden", "the signed URL is invalid or has expired")
        user_id = await request.user_id()
        item = await item_or_404(media_id)
        if not await service.may_read(user_id, item):
            raise ChatError("forbidden", "this media was not shared with you")
        return item, IMMUTABLE

    async def upload(request: Request) -> Response:
        body = _Body(request.body(), settings.upload_idle_timeout)
        try:
            return await receive(request, body)
        except ChatError:
            await body.drain()
            raise

    async def receive(request: Request, body: _Body) -> Response:
        user_id = await request.user_id()
        service = service_or_503()
        name = clean_name(request.args.get("name"))
        declared = request.content_length
        if declared is not None and declared > settings.max_upload_bytes:
            raise ChatError("too_large", f"uploads are limited to {settings.max_upload_bytes} bytes")
        head = await body.head(SNIFF_BYTES)
        if not head:
            raise ChatError("bad_request", "the upload is empty")
        mime = detect(head)
        category = settings.category_of(mime)
        if category is None:
            raise ChatError("unsupported_media_type", f"{mime} uploads are not accepted here")
        limit = settings.limit_of(category)
        if (declared or len(head)) > limit:
            raise ChatError("too_large", f"{category} uploads are limited to {limit} bytes")
        meter = await quotas().begin(user_id, declared)  # the user's quota, upload rate, the disk floor
        # images are processed from a local file (bounded by max_image_bytes); everything
        # else streams straight into the store's staging
        store = service.store
        upload: Upload = FileUpload(store.temp_path()) if category == "image" else store.new_upload(ctx.node_id)
        try:
            await meter.add(len(head))
            await upload.open()
            await upload.write(head)
            while (chunk := await body.next()) is not None:
                if upload.size + len(chunk) > limit:
                    raise ChatError("too_large", f"{category} uploads are limited to {limit} bytes")
                await meter.add(len(chunk))
                await upload.write(chunk)
            sha = await upload.finish()
            await ctx.check_upload(user_id, mime, upload.size, name)
            await meter.check_stored()
            item = await service.store_upload(user_id, upload.staged(), sha, upload.size, mime, category, name)
        except StoreUnavailable as exc:
            log.warning("upload failed: %s", exc)
            raise ChatError("unavailable", "the media store is not answering; try again") from None
        finally:
            meter.close()
            await upload.abort()  # the staged copy goes, whatever happened
        return json_response({"media": records.public(item)}, 201)

    async def download(request: Request, media_id: str) -> Response:
        item, cache = await authorized_item(request, media_id, CONTENT)
        attachment = item["category"] == "file"
        return await _serve(request, service_or_503().store, item["sha256"], CONTENT, item["size"], item["mime"],
                            item["sha256"], cache, _disposition(item.get("name"), attachment))

    async def thumbnail(request: Request, media_id: str) -> Response:
        item, cache = await authorized_item(request, media_id, THUMBNAIL)
        if not item.get("thumbnail"):
            raise ChatError("not_found", "this media has no thumbnail")
        return await _serve(request, service_or_503().store, item["sha256"], THUMBNAIL, None, "image/jpeg",
                            f"{item['sha256']}-t", cache, "inline")

    async def info(request: Request, media_id: str) -> Response:
        user_id = await request.user_id()
        item = await item_or_404(media_id)
        if not await plugin.service.may_read(user_id, item):
            raise ChatError("forbidden", "this media was not shared with you")
        extra = {"owner": item["owner"], "created": item["created"]}
        return json_response({"media": {**records.public(item), **extra}})

    async def signed(request: Request, media_id: str) -> Response:
        service = service_or_503()
        signer = await plugin.get_signer()
        if signer is None:
            raise ChatError("not_found", "signed URLs are switched off on this node")
        user_id = await request.user_id()
        item = await item_or_404(media_id)
        if not await service.may_read(user_id, item):
            raise ChatError("forbidden", "this media was not shared with you")
        exp = signer.expiry(now_ms())
        mid = int(item["id"])

        def url(variant: str, path: str) -> str:
            return f"/api/media/{mid}{path}?exp={exp}&sig={signer.sign(mid, variant, exp)}"

        return json_response({
            "url": url("content", ""),
            "thumbnail_url": url("thumbnail", "/thumbnail") if item.get("thumbnail") else None,
            "expires": exp,
        })

    return [
        Route("POST", "/api/media", upload, max_body=settings.max_upload_bytes),  # the one route with big bodies
        Route("GET", "/api/media/<media_id>", download),
        Route("GET", "/api/media/<media_id>/thumbnail", thumbnail),
        Route("GET", "/api/media/<media_id>/info", info),
        Route("GET", "/api/media/<media_id>/signed", signed),
    ]


def _disposition(name: str | None, attachment: bool) -> str:
    kind = "attachment" if attachment else "inline"
    if not name:
        return kind
    fallback = name.encode("ascii", "replace").decode().replace('"', "'").replace("?", "_")
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


async def _serve(request: Request, store: ContentStore, sha: str, variant: str, size: int | None, mime: str,
                 tag: str, cache: str, disposition: str) -> Response:
    """A stored variant, whole or the one range asked for, streamed in chunks: or, with
    presigned downloads on, a redirect to the store itself."""
    etag = f'"{tag}"'
    headers = {
        "ETag": etag,
        "Cache-Control": cache,
        "Accept-Ranges": "bytes",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    if etag_matches(request.headers.get("If-None-Match"), etag):
        return Response(b"", status=304, headers=headers, content_type=mime)
    presigned = store.presign(sha, variant, mime, disposition)
    if presigned is not None:
        return Response(b"", status=302, headers={"Location": presigned, "Cache-Control": "private, no-store"},
                        content_type=mime)
    try:
        if size is None:
            size = await store.size(sha, variant)
    except MissingContent:
        raise ChatError("not_found", "no such media") from None
    except StoreUnavailable as exc:
        log.warning("download failed: %s", exc)
        raise ChatError("unavailable", "the media store is not answering; try again") from None
    try:
        wanted = parse_range(request.headers.get("Range"), size) if if_range_allows(
            request.headers.get("If-Range"), etag) else None
    except Unsatisfiable:
        error = ChatError("bad_request", f"the range asked for is outside the content ({size} bytes)", status=416)
        response = json_response({"error": error.to_json()}, 416)
        response.headers["Content-Range"] = f"bytes */{size}"
        return response
    first, last = wanted if wanted is not None else (0, size - 1)
    headers["Content-Disposition"] = disposition
    headers["Content-Length"] = str(last - first + 1)
    status = 200
    if wanted is not None:
        status = 206
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    body: AsyncIterator[bytes] = _empty()
    if request.method != "HEAD" and size:
        try:  # opened before answering, so a missing content or a store that is down is a clean error
            body = await store.open_range(sha, variant, first, last)
        except MissingContent:
            raise ChatError("not_found", "no such media") from None
        except StoreUnavailable as exc:
            log.warning("download failed: %s", exc)
            raise ChatError("unavailable", "the media store is not answering; try again") from None
    return Response(body, status=status, headers=headers, content_type=mime)


async def _empty():
    return
    yield b""
