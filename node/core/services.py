"""What the core needs of the node around it, as protocols: the core is written against
these, never against the wiring (node/app.py) or the plugin manager, which implement them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import trio

    from ..config import Config
    from ..observe import Metrics
    from ..storage import Storage
    from .accounts import Accounts
    from .blocks import Blocks
    from .chats import Chats
    from .errors import ChatError
    from .hub import Hub
    from .ratelimit import UserBuckets
    from .routing import Routing
    from .session import FrameHandler


class PluginHooks(Protocol):
    """The hook calls the core makes (node/plugin_manager.py implements them)."""

    def notify(self, hook: str, **kwargs: Any) -> None: ...

    def has_impls(self, hook: str) -> bool: ...

    def client_error(self, exc: ChatError) -> ChatError: ...

    async def gate(self, hook: str, **kwargs: Any) -> None: ...


class Services(Protocol):
    """The running node as the core's sessions, sweepers and views see it."""

    config: Config
    storage: Storage
    hub: Hub
    accounts: Accounts
    chats: Chats
    blocks: Blocks
    plugins: PluginHooks
    frame_handlers: dict[str, FrameHandler]
    routing: Routing
    shutdown_requested: trio.Event
    metrics: Metrics
    send_limits: UserBuckets

    async def gate_message(self, user_id: int, chat_id: int, content: dict[str, Any]) -> dict[str, Any]: ...
