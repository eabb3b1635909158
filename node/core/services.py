"""What the core needs of the node around it, as protocols: the core is written against
these, never against the wiring (node/app.py) or the plugin manager, which implement them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Awaitable

    import trio

    from ..config import Config
    from ..observe import Metrics
    from ..storage import Storage
    from .accounts import Accounts
    from .blocks import Blocks
    from .chats import Chats
    from .connlimit import ConnectionLimits
    from .errors import ChatError
    from .hub import Hub
    from .ratelimit import UserBuckets
    from .readhub import ReadHub
    from .routing import Routing
    from .session import FrameHandler


class PluginHooks(Protocol):
    """The hook calls the core makes (node/plugin_manager.py implements them)."""

    def notify(self, hook: str, **kwargs: Any) -> None: ...

    def has_impls(self, hook: str) -> bool: ...

    def client_error(self, exc: ChatError) -> ChatError: ...

    async def gate(self, hook: str, **kwargs: Any) -> None: ...


class Services(Protocol):
    """The running node as the core's sessions, sweepers and views see it.

    Its parts are read-only properties: the core never replaces them, and a property
    lets the node hold a richer type (its `Plugins` manager for `PluginHooks`)."""

    @property
    def config(self) -> Config: ...
    @property
    def storage(self) -> Storage: ...
    @property
    def hub(self) -> Hub: ...
    @property
    def accounts(self) -> Accounts: ...
    @property
    def chats(self) -> Chats: ...
    @property
    def blocks(self) -> Blocks: ...
    @property
    def plugins(self) -> PluginHooks: ...
    @property
    def frame_handlers(self) -> dict[str, FrameHandler]: ...
    @property
    def routing(self) -> Routing: ...
    @property
    def shutdown_requested(self) -> trio.Event: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def connections(self) -> ConnectionLimits: ...
    @property
    def send_limits(self) -> UserBuckets: ...
    @property
    def read_hub(self) -> ReadHub | None: ...

    async def gate_message(self, user_id: int, chat_id: int, content: dict[str, Any]) -> dict[str, Any]: ...

    def gate_message_now(self, user_id: int, chat_id: int, content: dict[str, Any]
                         ) -> tuple[dict[str, Any], None] | tuple[None, Awaitable[dict[str, Any]]]: ...

    async def announce_user(self, user_id: int, user: dict[str, Any]) -> None: ...
