"""Serving the web client: the page, its files, the security headers, and the client's
own files hanging together (every import and reference resolves). The client itself is
tested in a browser by test_browser.py."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from node.web.client import STATIC_DIR


async def get(node, path: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=node.http_url) as http:
        return await http.get(path, headers=headers)


async def test_the_page_has_a_strict_csp_naming_the_chat_socket_for_the_host_used(node):
    for host in (f"127.0.0.1:{node.http_port}", f"localhost:{node.http_port}"):
        response = await get(node, "/", Host=host)
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        assert '<script type="module" src="/static/js/app.js">' in response.text
        csp = dict(part.strip().split(" ", 1) for part in response.headers["content-security-policy"].split(";"))
        assert csp["default-src"] == "'self'"
        assert csp["script-src"] == "'self'" and csp["style-src"] == "'self'"  # nothing inline
        assert csp["connect-src"] == f"'self' ws://{host.split(':')[0]}:{node.ws_port}"
        assert "blob:" in csp["media-src"] and "blob:" in csp["img-src"]
        assert csp["frame-ancestors"] == "'none'" and csp["object-src"] == "'none'"
        assert csp["worker-src"] == "'self'"  # the service worker, /sw.js
        assert csp["font-src"] == "'self'" and csp["base-uri"] == "'none'" and csp["form-action"] == "'self'"
        assert response.headers["cross-origin-opener-policy"] == "same-origin"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-cache"
        # voice messages: the microphone for the page itself only; no camera, no location
        assert response.headers["permissions-policy"] == "camera=(), microphone=(self), geolocation=()"


async def test_files_are_served_with_types_and_revalidated_by_etag(node):
    response = await get(node, "/static/js/app.js")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-content-type-options"] == "nosniff"
    etag = response.headers["etag"]
    again = await get(node, "/static/js/app.js", **{"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    css = await get(node, "/static/css/app.css")
    assert css.headers["content-type"] == "text/css; charset=utf-8"


async def test_the_service_worker_is_served_at_the_root_with_its_own_csp(node):
    response = await get(node, "/sw.js")
    assert response.status_code == 200
    assert response.content == (STATIC_DIR / "sw.js").read_bytes()
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"  # browsers refuse other types
    assert response.headers["cache-control"] == "no-cache"  # a new version is found at the next check
    assert response.headers["x-content-type-options"] == "nosniff"
    # The worker's own policy: it shows notifications and fetches nothing.
    assert response.headers["content-security-policy"] == "default-src 'none'"
    # At the root its scope is the whole client: no Service-Worker-Allowed needed.
    assert "service-worker-allowed" not in response.headers
    again = await get(node, "/sw.js", **{"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304
    source = response.text
    for event in ("push", "notificationclick"):
        assert f"addEventListener('{event}'" in source
    assert "importScripts" not in source and "fetch(" not in source  # as its CSP requires


async def test_unknown_and_outside_paths_are_json_404s(node):
    for path in ("/static/nope.js", "/static/js", "/static/../api.py", "/static/%2e%2e/api.py",
                 "/static/js/../../client.py", "/api/nope", "/api/chats/1/nope"):
        response = await get(node, path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found", path
    assert (await get(node, "/api/info")).headers["x-content-type-options"] == "nosniff"


def test_every_import_and_reference_of_the_client_resolves():
    files = {p.relative_to(STATIC_DIR).as_posix() for p in STATIC_DIR.rglob("*") if p.is_file()}
    index = (STATIC_DIR / "index.html").read_text()
    for ref in re.findall(r'(?:src|href)="/static/([^"#]+)"', index):
        assert ref in files, ref
    scripts = "".join(p.read_text() for p in STATIC_DIR.rglob("*.js"))
    ids = set(re.findall(r'\bid="([^"]+)"', index)) | set(re.findall(r"\bid: '([\w-]+)'", scripts))  # or made by a view
    for path in STATIC_DIR.rglob("*.js"):
        source = path.read_text()
        for ref in re.findall(r"""^import .* from '(\.[^']+)';$""", source, re.MULTILINE):
            target = (path.parent / ref).resolve().relative_to(STATIC_DIR).as_posix()
            assert target in files, f"{path.name} imports {ref}"
        for ref in re.findall(r"""\$\('#([\w-]+)'\)""", source):  # elements the views look up
            assert ref in ids, f"{path.name} looks up #{ref}, which index.html lacks"
        assert "innerHTML" not in source, f"{path.name}: build nodes, never parse strings as HTML"
    for name in re.findall(r"icon\('([\w-]+)'", scripts):
        assert f'<symbol id="i-{name}"' in index, f"icon {name!r} is not in the sprite"
    assert not re.search(r"\sstyle=|<style|<script(?![^>]*\bsrc=)", index)  # the CSP allows neither


def test_the_client_is_package_data():
    root = Path(__file__).resolve().parents[1]
    assert '"web/static/**/*"' in (root / "pyproject.toml").read_text()
    assert (STATIC_DIR / "index.html").is_file()


def test_every_error_code_has_a_sentence_in_the_client_and_in_its_doc():
    """One table (js/errors.js) says every error in words; docs/web-client.md lists it; no view
    shows the node's own message, which is written for developers."""
    from node.core.errors import ERROR_CODES

    source = (STATIC_DIR / "js/errors.js").read_text()
    table = source[source.index("export const MESSAGES = {"):]
    table = table[: table.index("\n};")]
    sentences = dict(re.findall(r"^  (\w+): '(.+)',$", table, re.MULTILINE))
    doc = (Path(__file__).resolve().parents[1] / "docs/web-client.md").read_text()
    section = doc[doc.index("## Errors"):]
    section = section[: section.index("\n## ")]
    for code in ERROR_CODES:
        assert code in sentences, f"js/errors.js has no sentence for {code}"
        row = re.search(rf"^\| `{code}` \| (.+) \|$", section, re.MULTILINE)
        assert row, f"docs/web-client.md's Errors table lacks {code}"
        assert row.group(1).startswith(sentences[code].replace("\\'", "'").split(":")[0].rstrip(".")), code
    for path in STATIC_DIR.rglob("*.js"):
        if path.name not in ("errors.js", "api.js"):
            shown = re.search(r"\b(err|error)\.message\b", path.read_text())
            assert not shown, f"{path.name} shows a raw error message"

