"""HTTP Range and conditional requests for media downloads (RFC 9110, sections 13 and 14).

A browser's <video> seeks with `Range: bytes=N-`; a download manager resumes with it.
One range is served as 206 with Content-Range. Several ranges in one header get the
whole content (200), which RFC 9110 allows, rather than a multipart body nobody uses
for media. A header that does not parse is ignored, as the RFC says.
"""

from __future__ import annotations


class Unsatisfiable(Exception):
    """The range starts beyond the end of the content: answer 416."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The byte range asked for as (first, last) inclusive, or None for the whole content.

    Raises Unsatisfiable when the single range asked for lies outside the content.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash:
        return None
    first_text, last_text = first_text.strip(), last_text.strip()
    if not first_text:  # suffix: the last N bytes
        if not last_text.isdigit():
            return None
        length = int(last_text)
        if length == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - length), size - 1
    if not first_text.isdigit() or (last_text and not last_text.isdigit()):
        return None
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last_text and last < first:
        return None  # invalid: ignored
    if first >= size:
        raise Unsatisfiable
    return first, min(last, size - 1)


def etag_matches(header: str | None, etag: str) -> bool:
    """If-None-Match: `*` or any listed tag equal to `etag` (weak comparison)."""
    if not header:
        return False
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


def if_range_allows(header: str | None, etag: str) -> bool:
    """If-Range: serve the range only if the client's copy is still the current one.

    Media content never changes, so a date (the other form) is trusted as well.
    """
    if not header:
        return True
    header = header.strip()
    if header.startswith(('"', "W/")):
        return header == etag  # strong comparison, as RFC 9110 requires here
    return True
