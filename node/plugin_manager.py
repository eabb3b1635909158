"""Loading plugins and calling their hooks with the policies of node/hookspecs.py.

pluggy calls implementations synchronously and stops at the first exception; chatnode
needs async implementations and per-plugin isolation, so hooks are called here, one
implementation at a time, through the public ``HookCaller.get_hookimpls()``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import cattrs
import pluggy
import trio

from . import hookspecs
from .config import ConfigError, PluginsSection, _first_problem, make_converter
from .core.errors import ChatError

if TYPE_CHECKING:
    from .app import Node

log = logging.getLogger(__name__)

#: Built-in plugins: (name, "module:factory"). Each factory returns a fresh plugin object,
#: so several nodes can run in one process without sharing state.
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("media", "node.plugins.media:MediaPlugin"),
    ("push", "node.plugins.push:PushPlugin"),
    ("receipts", "node.plugins.receipts:ReceiptsPlugin"),
    ("lastseen", "node.plugins.lastseen:LastSeenPlugin"),
    ("analytics", "node.plugins.lastseen.analytics:AnalyticsPlugin"),
)

ENTRY_POINT_GROUP = "chatnode"
SHUTDOWN_TIMEOUT = 5.0


PUMP_SLICE = 512  # notifications a pump handles between checkpoints (about a millisecond)

class Reject(Exception):
    """Raised by a ``prepare_message`` implementation to refuse a message."""

    def __init__(self, message: str = "a plugin rejected the message") -> None:
        super().__init__(message)
        self.message = message


def _load(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    module = __import__(module_name, fromlist=[attr])
    return getattr(module, attr)


def _instantiate(obj: Any) -> Any:
    return obj() if inspect.isclass(obj) else obj


async def await_maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class Plugins:
    """The plugin manager of one node, plus one event pump per plugin."""

    def __init__(
        self,
        config: PluginsSection,
        *,
        extra: Iterable[Any] = (),
        load_entrypoints: bool = True,
    ) -> None:
        self.pm = pluggy.PluginManager("chatnode")
        self._impl_cache: dict[str, list[pluggy.HookImpl]] = {}
        self.pm.add_hookspecs(hookspecs)
        self._config = config
        for name in config.disabled:
            self.pm.set_blocked(name)
        for name, target in DEFAULT_PLUGINS:
            if not self.pm.is_blocked(name):
                self.pm.register(_instantiate(_load(target)), name=name)
        if load_entrypoints:
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                if self.pm.is_blocked(ep.name) or self.pm.has_plugin(ep.name):
                    continue
                try:
                    self.pm.register(_instantiate(ep.load()), name=ep.name)
                except Exception as exc:
                    raise ConfigError(f"plugin {ep.name!r} failed to load: {exc}") from exc
        for plugin in extra:
            name = getattr(plugin, "name", None)
            if name is None or not self.pm.is_blocked(name):
                self.pm.register(plugin, name=name)
        try:
            self.pm.check_pending()  # a misspelled hook name fails here, not silently
        except pluggy.PluginValidationError as exc:
            raise ConfigError(str(exc)) from None
        self._settings = self._structure_settings()
        self._pumps: dict[str, trio.MemorySendChannel] = {}
        self._receivers: dict[str, trio.MemoryReceiveChannel] = {}
        self.node: Node | None = None
        self.dropped: dict[str, int] = {}
        self.failures: dict[str, int] = {}

    # -- config --------------------------------------------------------------------

    def _structure_settings(self) -> dict[str, Any]:
        declared: dict[str, type] = {}
        for plugin_name, result in self._collect_raw("register_settings"):
            if result is None:
                continue
            name, cls = result
            if name in declared:
                raise ConfigError(f"plugins {plugin_name!r} and another both declare [plugins.{name}]")
            declared[name] = cls
        converter = make_converter()
        settings: dict[str, Any] = {}
        for name, cls in declared.items():
            raw = self._config.settings.get(name, {})
            try:
                settings[name] = converter.structure(raw, cls)
            except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
                raise ConfigError(_first_problem(exc, f"plugins.{name}")) from None
        blocked = set(self._config.disabled)
        unknown = set(self._config.settings) - set(declared) - blocked
        if unknown:
            raise ConfigError(f"[plugins.{min(unknown)}]: no plugin with that name is loaded")
        return settings

    def settings(self, name: str) -> Any:
        """The structured ``[plugins.<name>]`` section of a plugin."""
        return self._settings[name]

    def names(self) -> list[str]:
        return [name for name, plugin in self.pm.list_name_plugin() if plugin is not None]

    # -- calling hooks --------------------------------------------------------------

    def _impls(self, hook: str) -> list[pluggy.HookImpl]:
        # reversed(): pluggy's own call order (LIFO, tryfirst first, trylast last). Plugins
        # are fixed once the node starts, so the list is computed once per hook.
        impls = self._impl_cache.get(hook)
        if impls is None:
            impls = [i for i in reversed(getattr(self.pm.hook, hook).get_hookimpls()) if not (i.wrapper or i.hookwrapper)]
            self._impl_cache[hook] = impls
        return impls

    @staticmethod
    def _call(impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> Any:
        return impl.function(*[kwargs[name] for name in impl.argnames])

    def _collect_raw(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        out = []
        for impl in self._impls(hook):
            try:
                out.append((impl.plugin_name, self._call(impl, kwargs)))
            except Exception as exc:
                raise ConfigError(f"plugin {impl.plugin_name!r} failed in {hook}: {exc}") from exc
        return out

    def collect(self, hook: str, **kwargs: Any) -> list[Any]:
        """A collector hook: every plugin's non-None result, in call order."""
        return [result for _, result in self._collect_raw(hook, **kwargs) if result is not None]

    async def startup(self, node: Node, nursery: trio.Nursery) -> None:
        for impl in self._impls("startup"):
            try:
                await await_maybe(self._call(impl, {"node": node, "nursery": nursery}))
            except Exception as exc:
                raise ConfigError(f"plugin {impl.plugin_name!r} failed to start: {exc}") from exc

    async def shutdown(self, node: Node) -> None:
        for impl in self._impls("shutdown"):
            with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_TIMEOUT):
                try:
                    await await_maybe(self._call(impl, {"node": node}))
                except Exception:
                    log.exception("plugin %s failed in shutdown", impl.plugin_name)

    async def prepare_message(self, **kwargs: Any) -> dict[str, Any]:
        """Run the gate; returns the (possibly transformed) content or raises ChatError."""
        for impl in self._impls("prepare_message"):
            try:
                result = await await_maybe(self._call(impl, kwargs))
            except Reject as exc:
                raise ChatError("rejected", exc.message) from None
            except ChatError:
                raise  # a documented answer (not_found, forbidden, ...): the sender gets its code
            except Exception:
                log.exception("plugin %s failed in prepare_message: message rejected", impl.plugin_name)
                self.failures[impl.plugin_name] = self.failures.get(impl.plugin_name, 0) + 1
                raise ChatError("internal", "a plugin failed while checking this message") from None
            if result is not None:
                if not isinstance(result, dict) or "kind" not in result:
                    log.error("plugin %s returned an invalid message from prepare_message", impl.plugin_name)
                    raise ChatError("internal", "a plugin failed while checking this message")
                kwargs["content"] = result
        return kwargs["content"]

    def has_impls(self, hook: str) -> bool:
        return bool(getattr(self.pm.hook, hook).get_hookimpls())

    # -- notifications ----------------------------------------------------------------

    def bind(self, node: Node) -> None:
        """The node passed as `node` to every notification."""
        self.node = node

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Queue a notification for every plugin implementing `hook`; never waits."""
        kwargs["node"] = self.node
        for impl in self._impls(hook):
            pump = self._pumps.get(impl.plugin_name)
            if pump is None:
                continue
            try:
                pump.send_nowait((impl, kwargs))
            except trio.WouldBlock:
                self.dropped[impl.plugin_name] = self.dropped.get(impl.plugin_name, 0) + 1
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass

    async def serve_pumps(self, queue_size: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """One task per plugin runs its notifications in order. Returns after `close_pumps`
        once every queued notification was handled."""
        async with trio.open_nursery() as nursery:
            for name in self.names():
                send, recv = trio.open_memory_channel[tuple[pluggy.HookImpl, dict[str, Any]]](queue_size)
                self._pumps[name] = send
                nursery.start_soon(self._pump, name, recv)
            task_status.started()

    def close_pumps(self) -> None:
        for send in self._pumps.values():
            send.close()

    async def _pump(self, name: str, recv: trio.MemoryReceiveChannel) -> None:
        """Run one plugin's notifications in order. What is already queued is taken without
        a trip through the scheduler per item (an `async for` over the channel yields on
        every item, and under load the pump then falls behind and drops), with a checkpoint
        every `PUMP_SLICE` items, so that a busy pump still lets other tasks run."""
        async with recv:
            handled = 0
            while True:
                try:
                    impl, kwargs = recv.receive_nowait()
                except trio.WouldBlock:
                    try:
                        impl, kwargs = await recv.receive()
                    except trio.EndOfChannel:
                        return
                except trio.EndOfChannel:
                    return
                try:
                    await await_maybe(self._call(impl, kwargs))
                except Exception:
                    self.failures[name] = self.failures.get(name, 0) + 1
                    log.exception("plugin %s failed in %s", name, impl.function.__name__)
                handled += 1
                if handled % PUMP_SLICE == 0:
                    await trio.lowlevel.checkpoint()

    def statistics(self) -> dict[str, Any]:
        return {
            "loaded": self.names(),
            "dropped_notifications": dict(self.dropped),
            "failures": dict(self.failures),
        }


__all__ = ["DEFAULT_PLUGINS", "Plugins", "Reject", "await_maybe"]
