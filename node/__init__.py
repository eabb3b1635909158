"""chatnode: a self-hostable chat server.

The public API for plugins: ``hookimpl`` marks hook implementations, ``Reject`` vetoes a
message in ``prepare_message``, ``ChatError`` answers with a documented error code; the
``get_*``/``check_fields`` helpers validate WebSocket events, ``json_body`` and
``parse_id`` help HTTP routes. Everything else a plugin needs comes through the ``node``
object its hooks receive (see docs/plugins.md).
"""

from .core.errors import ChatError as ChatError
from .core.protocol import check_fields as check_fields
from .core.protocol import get_id as get_id
from .core.protocol import get_int as get_int
from .core.protocol import get_str as get_str
from .core.snowflake import parse_id as parse_id
from .hookspecs import hookimpl as hookimpl
from .plugin_manager import Reject as Reject
from .plugin_store import PluginStore as PluginStore
from .plugin_store import StoreBatch as StoreBatch
from .plugin_store import Table as Table
from .web.api import json_body as json_body

__all__ = [
    "ChatError", "PluginStore", "Reject", "StoreBatch", "Table", "check_fields", "get_id", "get_int", "get_str",
    "hookimpl", "json_body", "parse_id",
]
