"""Loading plugins and calling their hooks with the policies of node/hookspecs.py.

pluggy calls implementations synchronously and stops at the first exception; chatnode
needs async implementations, per-plugin isolation and a per-plugin ``ctx``, so hooks are
called here, one implementation at a time, through the public
``HookCaller.get_hookimpls()``. A hook's kind comes from its spec (the decorator in
node/hookspecs.py), never from the call site, and each helper checks it is asked to call
a hook of its kind.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib.metadata import PackageNotFoundError, entry_points, version
from typing import TYPE_CHECKING, Any

import attrs
import cattrs
import pluggy
import trio

from . import hookspecs
from .config import ConfigError, PluginsSection, _first_problem, make_converter
from .core.errors import ERROR_CODES, ChatError
from .plugin_api import FrameHandler, PluginContext, PluginError, Reject, Route, read_only
from .storage import StorageError

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


def _load(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    module = __import__(module_name, fromlist=[attr])
    return getattr(module, attr)


def _instantiate(obj: Any) -> Any:
    return obj() if inspect.isclass(obj) else obj


async def await_maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _version_of(plugin: Any, default: str) -> str:
    declared = getattr(plugin, "version", None) or getattr(inspect.getmodule(plugin), "__version__", None)
    if isinstance(declared, str):
        return declared
    top = (inspect.getmodule(type(plugin)) or inspect.getmodule(plugin)).__name__.split(".")[0]  # type: ignore[union-attr]
    try:
        return version(top)
    except (PackageNotFoundError, ValueError):
        return default


class Plugins:
    """The plugin manager of one node, plus one event pump per plugin."""

    def __init__(
        self,
        config: PluginsSection,
        *,
        extra: Iterable[Any] = (),
        load_entrypoints: bool = True,
        node_version: str = "0.0.0",
    ) -> None:
        self.pm = pluggy.PluginManager("chatnode")
        self.pm.add_hookspecs(hookspecs)
        self._config = config
        self.contexts: dict[str, PluginContext] = {}  # filled by `bind`
        self._unhandled = 0  # notifications queued and not yet handled (see `pending`)
        self._closing = False  # `close_pumps` was called: nothing new runs
        self.versions: dict[str, str] = {}
        self.builtin: set[str] = set()
        extra = list(extra)
        self._check_disabled(config.disabled, extra)
        for name in config.disabled:
            self.pm.set_blocked(name)
        for name, target in DEFAULT_PLUGINS:
            if not self.pm.is_blocked(name):
                plugin = _instantiate(_load(target))
                self.pm.register(plugin, name=name)
                self.versions[name] = node_version
                self.builtin.add(name)
        if load_entrypoints:
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                if self.pm.is_blocked(ep.name) or self.pm.has_plugin(ep.name):
                    continue
                try:
                    plugin = _instantiate(ep.load())
                    self.pm.register(plugin, name=ep.name)
                except Exception as exc:
                    raise ConfigError(f"plugin {ep.name!r} failed to load: {exc}") from exc
                self.versions[ep.name] = ep.dist.version if ep.dist is not None else _version_of(plugin, "unknown")
        for plugin in extra:
            extra_name: str | None = getattr(plugin, "name", None)
            if extra_name is None or not self.pm.is_blocked(extra_name):
                registered = self.pm.register(plugin, name=extra_name)
                self.versions[registered or repr(plugin)] = _version_of(plugin, "unknown")
        self._kinds: dict[str, str] = {}  # hook -> kind
        self._owners: dict[str, str] = {}  # plugin-declared hook -> the plugin that declared it
        self._impl_cache: dict[str, list[pluggy.HookImpl]] = {}
        self._add_plugin_hookspecs()
        try:
            self.pm.check_pending()  # a misspelled hook name fails here, not silently
        except pluggy.PluginValidationError as exc:
            raise ConfigError(str(exc)) from None
        self._check_impls()
        self._settings = self._structure_settings()
        self.error_codes = self._collect_error_codes()
        self._pumps: dict[str, trio.MemorySendChannel] = {}
        self._queued: dict[str, int] = {}  # plugin -> notifications queued to its pump, or being handled
        self.node: Node | None = None
        self.dropped: dict[str, int] = {}
        self.failures: dict[str, int] = {}

    # -- validation at start-up -------------------------------------------------------

    @staticmethod
    def _check_disabled(disabled: Iterable[str], extra: Iterable[Any]) -> None:
        """A misspelt name in `[plugins] disabled` would leave that plugin running."""
        known = {name for name, _ in DEFAULT_PLUGINS} | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
        known |= {name for plugin in extra if isinstance(name := getattr(plugin, "name", None), str)}
        for name in disabled:
            if name not in known:
                raise ConfigError(f"plugins.disabled: no plugin is named {name!r}; "
                                  f"the plugins are {', '.join(sorted(known))}")

    def _add_plugin_hookspecs(self) -> None:
        for name, spec in self._collect_raw("register_hookspecs", {}, validate=False):
            if spec is None:
                continue
            declared = [n for n, fn in inspect.getmembers(spec) if getattr(fn, "chatnode_kind", None)]
            for hook in declared:
                if hasattr(hookspecs, hook) or hook in self._owners:
                    raise ConfigError(f"plugin {name!r} declares the hook {hook!r}, which already exists")
                self._owners[hook] = name
            try:
                self.pm.add_hookspecs(spec)
            except pluggy.PluginValidationError as exc:  # an impl registered already does not fit
                raise ConfigError(str(exc)) from None

    def _check_impls(self) -> None:
        """Refuse at start-up what would otherwise be silently ignored or misused."""
        for hook in self.pm.hook.__dict__.values():
            if not isinstance(hook, pluggy.HookCaller) or hook.spec is None:
                continue
            kind = getattr(hook.spec.function, "chatnode_kind", None)
            if kind not in hookspecs.KINDS:
                raise ConfigError(f"the hook {hook.name!r} does not declare its kind "
                                  f"(mark it with node.collector, node.notification, ...)")
            self._kinds[hook.name] = kind
            if hook.spec.opts.get("firstresult") and kind != "collector":
                raise ConfigError(f"the hook {hook.name!r}: firstresult is supported on collector hooks only")
            if hook.spec.opts.get("historic"):
                raise ConfigError(f"the hook {hook.name!r}: historic hooks are not supported")
            for impl in hook.get_hookimpls():
                if impl.hookwrapper or impl.wrapper:
                    raise ConfigError(
                        f"plugin {impl.plugin_name!r}: {hook.name} is implemented as a hook wrapper, which chatnode "
                        f"does not support (each implementation is called on its own); drop wrapper=True")
                if kind == "collector" and inspect.iscoroutinefunction(impl.function):
                    raise ConfigError(f"plugin {impl.plugin_name!r}: {hook.name} is a collector, called "
                                      f"synchronously at start-up; it must not be async")

    def _structure_settings(self) -> dict[str, Any]:
        declared: dict[str, type] = {}
        owner: dict[str, str] = {}
        for plugin_name, result in self._collect_raw("register_settings", {}, validate=False):
            if result is None:
                continue
            name, cls = result
            if name in declared:
                raise ConfigError(f"plugins {plugin_name!r} and {owner[name]!r} both declare [plugins.{name}]")
            declared[name], owner[name] = cls, plugin_name
        converter = make_converter()
        settings: dict[str, Any] = {}
        for name, cls in declared.items():
            raw = self._config.settings.get(name, {})
            try:
                settings[owner[name]] = settings[name] = converter.structure(raw, cls)
            except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
                raise ConfigError(_first_problem(exc, f"plugins.{name}")) from None
        blocked = set(self._config.disabled)
        unknown = set(self._config.settings) - set(declared) - blocked
        if unknown:
            raise ConfigError(f"[plugins.{min(unknown)}]: no plugin with that name is loaded")
        return settings

    def _collect_error_codes(self) -> dict[str, tuple[int, str]]:
        codes: dict[str, tuple[int, str]] = {}
        owner: dict[str, str] = {}
        for plugin_name, result in self._collect_raw("register_error_codes", {}, validate=False):
            for code, value in (result or {}).items():
                if code in ERROR_CODES:
                    raise ConfigError(f"plugin {plugin_name!r} declares the error code {code!r}, a core code")
                if code in codes:
                    raise ConfigError(f"plugins {plugin_name!r} and {owner[code]!r} both declare the error code "
                                      f"{code!r}")
                status, meaning = value
                if not (isinstance(status, int) and 400 <= status <= 599 and isinstance(meaning, str)):
                    raise ConfigError(f"plugin {plugin_name!r}: error code {code!r} needs (HTTP status 4xx/5xx, "
                                      f"meaning)")
                codes[code], owner[code] = (status, meaning), plugin_name
        return codes

    def settings(self, name: str) -> Any:
        """The structured ``[plugins.<name>]`` section of a plugin."""
        return self._settings[name]

    def names(self) -> list[str]:
        return [name for name, plugin in self.pm.list_name_plugin() if plugin is not None]

    def describe(self) -> list[dict[str, Any]]:
        """Every loaded plugin: name, version, built in or installed, the hooks it implements."""
        out = []
        for name in self.names():
            plugin = self.pm.get_plugin(name)
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            out.append({"name": name, "version": self.versions.get(name, "unknown"),
                        "builtin": name in self.builtin, "hooks": hooks})
        return out

    def known_error_code(self, code: str) -> bool:
        return code in ERROR_CODES or code in self.error_codes

    def client_error(self, exc: ChatError) -> ChatError:
        """What a client is told for an error raised in a route, frame handler or gate: a
        plugin's declared code as itself, an undeclared one as ``internal``."""
        if isinstance(exc, PluginError):
            if not self.known_error_code(exc.code):
                log.error("a plugin raised the undeclared error code %r: %s", exc.code, exc.message)
                return ChatError("internal")
            return exc.declared(self.error_codes)
        return exc

    # -- calling hooks --------------------------------------------------------------

    def bind(self, node: Node) -> None:
        """Create every plugin's context (handed to its hooks as ``ctx``)."""
        self.node = node
        for name in self.names():
            self.contexts[name] = PluginContext(node, name, self._settings.get(name))

    def _impls(self, hook: str) -> list[pluggy.HookImpl]:
        # reversed(): pluggy's own call order (LIFO, tryfirst first, trylast last). Plugins
        # are fixed once the node starts, so the list is computed once per hook.
        impls = self._impl_cache.get(hook)
        if impls is None:
            impls = list(reversed(getattr(self.pm.hook, hook).get_hookimpls()))
            self._impl_cache[hook] = impls
        return impls

    def _call(self, impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> Any:
        ctx = self.contexts.get(impl.plugin_name)
        return impl.function(*[ctx if name == "ctx" else kwargs[name] for name in impl.argnames])

    def _expect(self, hook: str, kind: str) -> None:
        actual = self._kinds.get(hook)
        if actual != kind:
            raise TypeError(f"{hook} is a {actual} hook, not a {kind} hook")

    def _collect_raw(self, hook: str, kwargs: dict[str, Any], *, validate: bool = True) -> list[tuple[str, Any]]:
        if validate:
            self._expect(hook, "collector")
        out = []
        for impl in self._impls(hook):
            try:
                out.append((impl.plugin_name, self._call(impl, kwargs)))
            except Exception as exc:
                raise ConfigError(f"plugin {impl.plugin_name!r} failed in {hook}: {exc}") from exc
        return out

    def frame_types(self) -> dict[str, FrameHandler]:
        """Every plugin's chat-socket event handlers (``register_frame_types``), guarded."""
        out: dict[str, FrameHandler] = {}
        for plugin, handlers in self._collect_raw("register_frame_types", {}):
            for name, handler in (handlers or {}).items():
                if name in out:
                    raise ConfigError(f"two handlers for the WebSocket event type {name!r}")
                out[name] = self._guarded(plugin, f"its handler of {name!r} events", handler)
        return out

    def routes(self, *, passthrough: tuple[type[Exception], ...] = ()) -> list[Route]:
        """Every plugin's HTTP routes (``register_routes``), their handlers guarded;
        `passthrough`: exceptions the web layer answers itself (a body too large or too slow)."""
        out = []
        for plugin, routes in self._collect_raw("register_routes", {}):
            for route in routes or ():
                if not isinstance(route, Route):
                    raise ConfigError(f"plugin {plugin!r}: register_routes must return node.Route objects, "
                                      f"got {route!r}")
                what = f"its route {route.method} {route.path}"
                out.append(attrs.evolve(route, handler=self._guarded(plugin, what, route.handler, passthrough)))
        return out

    def _guarded(self, plugin: str, what: str, handler: Callable[..., Awaitable[Any]],
                 passthrough: tuple[type[Exception], ...] = ()) -> Callable[..., Awaitable[Any]]:
        """A plugin's route or event handler whose failures reach the client as documented
        codes: ``Reject`` as ``rejected``, storage trouble as ``unavailable``, and any
        other exception, logged with the plugin's name, as ``internal``. One plugin's bug
        never closes the connection it came from."""

        async def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return await handler(*args, **kwargs)
            except passthrough:
                raise
            except Exception as exc:
                answer = self._answer(plugin, what, exc)
                if answer is exc:
                    raise
                raise answer from None

        return call

    def _answer(self, plugin: str, what: str, exc: Exception) -> ChatError:
        """What the client is told when a plugin's code raised `exc` (called while it is
        being handled): a documented code as it is, ``Reject`` as ``rejected``, storage
        trouble as ``unavailable``, anything else (logged, counted) as ``internal``."""
        if isinstance(exc, Reject):
            return ChatError("rejected", exc.message)
        if isinstance(exc, ChatError):
            if self.known_error_code(exc.code):
                return exc
            log.error("plugin %s raised the undeclared error code %r in %s", plugin, exc.code, what)
        elif isinstance(exc, StorageError):
            log.warning("plugin %s: storage failed in %s: %s", plugin, what, exc)
            return ChatError("unavailable", "storage is unavailable; retry")
        else:
            log.exception("plugin %s failed in %s", plugin, what)
            self.failures[plugin] = self.failures.get(plugin, 0) + 1
        return ChatError("internal", "a plugin failed while handling this request")

    def collect(self, hook: str, **kwargs: Any) -> list[Any]:
        """A core collector hook: every plugin's non-None result, in call order."""
        return [result for _, result in self._collect_raw(hook, kwargs) if result is not None]

    def collect_own(self, plugin: str, hook: str, kwargs: dict[str, Any]) -> list[Any]:
        """A collector a plugin declared, fired by that plugin (``ctx.collect``)."""
        self._check_owner(plugin, hook)
        results = self.collect(hook, **kwargs)
        spec = getattr(self.pm.hook, hook).spec
        if spec is not None and spec.opts.get("firstresult"):
            return results[:1]
        return results

    def _check_owner(self, plugin: str, hook: str) -> None:
        if self._owners.get(hook) != plugin:
            raise PermissionError(f"plugin {plugin!r} may fire only the hooks it declares, not {hook!r}")

    async def startup(self, nursery: trio.Nursery) -> None:
        self._expect("startup", "lifecycle")
        for impl in self._impls("startup"):
            try:
                await await_maybe(self._call(impl, {"nursery": nursery}))
            except Exception as exc:
                raise ConfigError(f"plugin {impl.plugin_name!r} failed to start: {exc}") from exc

    async def shutdown(self) -> None:
        self._expect("shutdown", "lifecycle")
        for impl in self._impls("shutdown"):
            with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_TIMEOUT):
                try:
                    await await_maybe(self._call(impl, {}))
                except Exception:
                    log.exception("plugin %s failed in shutdown", impl.plugin_name)

    def has_impls(self, hook: str) -> bool:
        return bool(self._impls(hook))

    async def gate(self, hook: str, **kwargs: Any) -> None:
        """Run a gate: every plugin in turn; the first refusal raises (fails closed)."""
        self._expect(hook, "gate")
        for impl in self._impls(hook):
            await self._run_gate(impl, hook, kwargs)

    def message_gates_now(self, *, content: dict[str, Any], prepare: bool, **kwargs: Any
                          ) -> tuple[dict[str, Any], None] | tuple[None, Awaitable[dict[str, Any]]]:
        """The ``check_message`` gates, then (`prepare`) the ``prepare_message`` ones, without
        an await while each plugin answers at once (a plain function's answer): (the content,
        None). From the first that returns an awaitable (an `async def` returns its coroutine)
        on: (None, an awaitable of the content) that awaits it and runs the rest. Each gate
        sees the content so far read-only (a view made only when a plugin implements one:
        this runs for every message); ``prepare_message`` replaces it by returning a new dict."""
        steps = self._message_gates[prepare]
        view = None
        for i, (hook, impl) in enumerate(steps):
            if view is None:  # (made again only after a plugin replaced the content)
                view = read_only(content)
            try:
                result = self._call(impl, {**kwargs, "content": view})
            except Exception as exc:
                raise self._answer(impl.plugin_name, hook, exc) from None
            if inspect.isawaitable(result):
                return None, self._message_gates_from(steps, i, result, content, view, kwargs)
            content, view = self._gate_result(hook, impl, result, content, view)
        return content, None

    async def _message_gates_from(self, steps: list[tuple[str, pluggy.HookImpl]], first: int, pending: Awaitable[Any],
                                  content: dict[str, Any], view: Mapping[str, Any],
                                  kwargs: dict[str, Any]) -> dict[str, Any]:
        """`message_gates_now` from `steps[first]` on, whose answer (to `view`) is `pending`."""
        hook, impl = steps[first]
        try:
            result = await pending
        except Exception as exc:
            raise self._answer(impl.plugin_name, hook, exc) from None
        content, seen = self._gate_result(hook, impl, result, content, view)
        for hook, impl in steps[first + 1:]:
            if seen is None:
                seen = read_only(content)
            result = await self._run_gate(impl, hook, {**kwargs, "content": seen})
            content, seen = self._gate_result(hook, impl, result, content, seen)
        return content

    @functools.cached_property
    def _message_gates(self) -> dict[bool, list[tuple[str, pluggy.HookImpl]]]:
        check = [("check_message", impl) for impl in self._impls("check_message")]
        return {False: check, True: check + [("prepare_message", impl) for impl in self._impls("prepare_message")]}

    @staticmethod
    def _gate_result(hook: str, impl: pluggy.HookImpl, result: Any, content: dict[str, Any],
                     view: Mapping[str, Any]) -> tuple[dict[str, Any], Mapping[str, Any] | None]:
        """(content, the view of it) after a gate answered `result` to `view` (a new dict
        from ``prepare_message`` replaces the content: its view is made when needed)."""
        if hook != "prepare_message" or result is None or result is view:
            return content, view
        if not isinstance(result, dict) or "kind" not in result:
            log.error("plugin %s returned an invalid message from prepare_message", impl.plugin_name)
            raise ChatError("internal", "a plugin failed while checking this message")
        return result, None

    async def _run_gate(self, impl: pluggy.HookImpl, hook: str, kwargs: dict[str, Any]) -> Any:
        # A plain function's answer needs no await: no coroutine per gate and message.
        try:
            result = self._call(impl, kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result
        except Exception as exc:  # the request is refused, with the code `_answer` gives
            answer = self._answer(impl.plugin_name, hook, exc)
            if answer is exc:
                raise
            raise answer from None

    # -- notifications ----------------------------------------------------------------

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Fire a core notification for every plugin implementing it; never waits.

        When a plugin's pump has nothing queued, its implementation is called at once (the
        order stays that of the events): a plain function (`def`) that finds nothing to do
        costs no task switch, and an awaitable it returns (an `async def`'s coroutine) is
        awaited in the pump. Otherwise the call waits in the pump's queue."""
        for impl in self._impls(hook):
            name = impl.plugin_name
            pump = self._pumps.get(name)
            if pump is None:
                continue
            if not self._queued[name] and not self._closing:
                self._call_now(name, impl, kwargs)
            else:
                self._queue(name, pump, (impl, kwargs))

    def _call_now(self, name: str, impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> None:
        self._queued[name] += 1  # what it fires for its own plugin meanwhile waits in the pump
        try:
            result = self._call(impl, kwargs)
        except Exception:
            self._failed(name, impl)
            return
        finally:
            self._queued[name] -= 1
        if inspect.isawaitable(result):
            self._queue(name, self._pumps[name], (impl, result))

    def _queue(self, name: str, pump: trio.MemorySendChannel, item: tuple[pluggy.HookImpl, Any]) -> None:
        """`item`: (impl, kwargs to call it with) or (impl, an awaitable it returned)."""
        try:
            pump.send_nowait(item)
        except trio.WouldBlock:
            self.dropped[name] = self.dropped.get(name, 0) + 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        else:
            self._unhandled += 1
            self._queued[name] += 1
            return
        close = getattr(item[1], "close", None)
        if close is not None and not isinstance(item[1], dict):
            close()  # a coroutine that will never run: no "never awaited" warning

    def _failed(self, name: str, impl: pluggy.HookImpl) -> None:
        self.failures[name] = self.failures.get(name, 0) + 1
        log.exception("plugin %s failed in %s", name, impl.function.__name__)

    def notify_own(self, plugin: str, hook: str, kwargs: dict[str, Any]) -> None:
        """A notification a plugin declared, fired by that plugin (``ctx.notify``)."""
        self._check_owner(plugin, hook)
        self._expect(hook, "notification")
        self.notify(hook, **kwargs)

    async def serve_pumps(self, queue_size: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """One task per plugin runs its notifications in order. Returns after `close_pumps`
        once every queued notification was handled."""
        async with trio.open_nursery() as nursery:
            for name in self.names():
                send, recv = trio.open_memory_channel[tuple[pluggy.HookImpl, Any]](queue_size)
                self._pumps[name] = send
                self._queued[name] = 0
                nursery.start_soon(self._pump, name, recv)
            task_status.started()

    def close_pumps(self) -> None:
        self._closing = True
        for send in self._pumps.values():
            send.close()

    def pending(self) -> int:
        """Notifications queued and not yet handled, over every plugin."""
        return self._unhandled

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
                    await await_maybe(self._call(impl, kwargs) if type(kwargs) is dict else kwargs)
                except Exception:
                    self._failed(name, impl)
                finally:
                    self._unhandled -= 1
                    self._queued[name] -= 1
                handled += 1
                if handled % PUMP_SLICE == 0:
                    await trio.lowlevel.checkpoint()

    def statistics(self) -> dict[str, Any]:
        """Every loaded plugin has its counters, at 0 until something happens, so that
        /metrics has a series per plugin to alert on from the start."""
        loaded = self.names()
        return {
            "loaded": loaded,
            "dropped_notifications": {**dict.fromkeys(loaded, 0), **self.dropped},
            "failures": {**dict.fromkeys(loaded, 0), **self.failures},
            **{name: ctx.statistics() for name, ctx in self.contexts.items() if ctx.statistics()},
        }


__all__ = ["DEFAULT_PLUGINS", "Plugins", "Reject", "await_maybe"]
