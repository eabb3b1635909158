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
        assert re.search(rf"^\| {code} \|", text, re.M), f"close code {code} missing from docs/protocol.md"
