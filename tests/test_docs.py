"""The docs cannot drift from the code: every error code and close code is documented."""

from __future__ import annotations

import re
from pathlib import Path

from node.core.errors import CLOSE_CODES, ERROR_CODES

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_error_code_is_in_the_protocol_doc():
    text = (DOCS / "protocol.md").read_text()
    for code, (status, _meaning) in ERROR_CODES.items():
        assert re.search(rf"\| `{code}` \| {status} \|", text), f"{code} ({status}) missing from docs/protocol.md"


def test_every_close_code_is_in_the_protocol_doc():
    text = (DOCS / "protocol.md").read_text()
    for code in CLOSE_CODES:
        assert re.search(rf"^\| {code} \|", text, re.MULTILINE), f"close code {code} missing from docs/protocol.md"


def test_every_hook_has_a_section_headed_by_its_signature():
    import inspect

    from node import hookspecs

    text = (DOCS / "plugins.md").read_text()
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if hasattr(fn, "chatnode_spec"):
            args = ", ".join(inspect.signature(fn).parameters)
            assert f"### {name}({args})" in text, f"docs/plugins.md lacks '### {name}({args})'"


def test_every_hook_has_a_contract_in_its_docstring():
    import inspect

    from node import hookspecs

    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if hasattr(fn, "chatnode_spec"):
            doc = inspect.getdoc(fn) or ""
            assert any(word in doc for word in ("Notification", "Synchronous", "Awaited")), name
