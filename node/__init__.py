"""chatnode: a self-hostable chat server.

This package's top level is the whole API a plugin may use (docs/plugins.md): mark hook
implementations with ``hookimpl``; every hook receives the plugin's `PluginContext` as
``ctx``, whose reads return frozen snapshots (`User`, `Chat`, `Member`, `Message`). A
plugin's durable data lives in ``ctx.store`` (`PluginStore`: tables of `Table`, written
with a `StoreBatch`); its HTTP routes are `Route` objects whose handlers take a `Request`
and return a `Response` (or use `json_response`); gates refuse with `Reject` or a
`PluginError` carrying a code declared in ``register_error_codes``. The ``check_fields``
and ``get_*`` helpers validate chat-socket events, ``parse_id`` reads an id. Plugins that
declare hooks of their own mark them with ``collector`` or ``notification``.

Nothing else in the package is API: the core, storage, web layer and wiring may change
between versions (tests/test_layering.py keeps the built-in plugins to this surface).
"""

from .core.errors import ChatError as ChatError
from .core.protocol import check_fields as check_fields
from .core.protocol import get_id as get_id
from .core.protocol import get_int as get_int
from .core.protocol import get_str as get_str
from .core.snowflake import parse_id as parse_id
from .hookspecs import collector as collector
from .hookspecs import hookimpl as hookimpl
from .hookspecs import notification as notification
from .plugin_api import Chat as Chat
from .plugin_api import Client as Client
from .plugin_api import FrameHandler as FrameHandler
from .plugin_api import Member as Member
from .plugin_api import Message as Message
from .plugin_api import PluginContext as PluginContext
from .plugin_api import PluginError as PluginError
from .plugin_api import Reject as Reject
from .plugin_api import Request as Request
from .plugin_api import Response as Response
from .plugin_api import Route as Route
from .plugin_api import User as User
from .plugin_api import json_response as json_response
from .plugin_store import PluginStore as PluginStore
from .plugin_store import StoreBatch as StoreBatch
from .plugin_store import Table as Table
from .plugin_store import shared_secret as shared_secret

__all__ = [
    "Chat", "ChatError", "Client", "FrameHandler", "Member", "Message", "PluginContext", "PluginError",
    "PluginStore", "Reject", "Request", "Response", "Route", "StoreBatch", "Table", "User", "check_fields",
    "collector", "get_id", "shared_secret", "get_int", "get_str", "hookimpl", "json_response", "notification", "parse_id",
]
