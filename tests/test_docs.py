"""The docs cannot drift from the code: every error code and close code is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from node.core.errors import CLOSE_CODES, ERROR_CODES

pytestmark = pytest.mark.engine("lmdb")  # docs checks: no storage

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_error_code_is_in_the_protocol_doc():
    text = (DOCS / "protocol.md").read_text()
    for code, (status, _meaning) in ERROR_CODES.items():
        assert re.search(rf"\| `{code}` \| {status} \|", text), f"{code} ({status}) missing from docs/protocol.md"
    documented = set(re.findall(r"^\| `([a-z_]+)` \| \d{3} \|", text, re.MULTILINE))
    assert documented == set(ERROR_CODES), f"documented but never sent: {sorted(documented - set(ERROR_CODES))}"


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


def test_every_hook_declares_its_kind_and_says_it_in_its_docstring():
    import inspect

    from node import hookspecs
    from node.plugins.lastseen import hooks as lastseen_hooks
    from node.plugins.push import hooks as push_hooks

    for module in (hookspecs, lastseen_hooks, push_hooks):
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if hasattr(fn, "chatnode_spec"):
                kind = getattr(fn, "chatnode_kind", None)
                assert kind in hookspecs.KINDS, name
                assert kind.capitalize() in (inspect.getdoc(fn) or ""), name


def test_the_plugin_docs_name_every_public_api_name():
    import node

    text = (DOCS / "plugins.md").read_text()
    for name in node.__all__:
        assert f"`{name}" in text, f"docs/plugins.md does not mention {name}"


def test_the_limits_table_gives_the_defaults_of_the_config():
    """docs/operations.md, "Limits worth knowing": each `limits.` setting's default is the config's."""
    import attrs

    from node.config import LimitsSection

    defaults = {field.name: field.default for field in attrs.fields(LimitsSection)}
    text = (DOCS / "operations.md").read_text()
    rows = re.findall(r"^\| `limits\.(\w+)`(?: / `(\w+)`)? \| ([\d.]+)(?: / ([\d.]+))?", text, re.MULTILINE)
    assert len(rows) >= 8
    for first, second, value, second_value in rows:
        assert float(value) == defaults[first], first
        if second:
            assert float(second_value) == defaults[second], second
