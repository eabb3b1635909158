"""The core's own records in the engines' key-value store (`kv_put` / `kv_scan`).

Small per-user and per-message records that are neither log entries nor chat state live
here, in namespaces that start with ``_core/``: a plugin's namespace is its name, which
must start with a letter, so no plugin can read or write these (docs/architecture.md).
Keys are fixed-width big-endian integers, so a range of keys is a range of chats, seqs
or users on both engines.

=====================  ==============================  ===========================
namespace              key                             value
=====================  ==============================  ===========================
``_core/reactions``    chat | seq | user               ``{"e": emoji, "ts": ms}``
``_core/stars``        user | chat | seq               u64 ms starred
``_core/hidden``       user | chat | seq               empty (deleted for me)
``_core/reports``      report id                       the report (JSON)
=====================  ==============================  ===========================
"""

from __future__ import annotations

from ..storage.keys import u64

REACTIONS = "_core/reactions"
STARS = "_core/stars"
HIDDEN = "_core/hidden"
REPORTS = "_core/reports"

SCAN_PAGE = 1000


def key(*parts: int) -> bytes:
    return b"".join(u64(p) for p in parts)


def ints(raw: bytes) -> tuple[int, ...]:
    return tuple(int.from_bytes(raw[i:i + 8], "big") for i in range(0, len(raw), 8))
