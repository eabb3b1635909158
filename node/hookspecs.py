"""The hooks a chatnode plugin may implement (pluggy project name ``chatnode``).

Every hook is called by keyword, and an implementation may accept any subset of the
arguments (so a hook can gain arguments without breaking plugins). ``ctx`` is the
plugin's own `node.PluginContext`. Each hook has one **kind**, declared here with its
decorator, and each kind one calling convention and failure policy:

- **collector** (``register_*``): synchronous, called once at start-up; what every plugin
  returns is gathered. An exception stops start-up, naming the plugin.
- **lifecycle** (``startup``, ``shutdown``): awaited in turn. A failing ``startup`` stops
  start-up; a failing ``shutdown`` is logged and the others still run.
- **gate** (``check_*``, ``prepare_message``): awaited by the requester before anything
  is stored. Raise ``node.Reject("why")`` to refuse (the client gets ``rejected``) or a
  ``node.PluginError(code, ...)`` to refuse with a code of your own; any other exception
  is logged and refuses too (gates fail closed).
- **notification** (``on_*``): fire-and-forget, after the fact. Each plugin has its own
  event pump (a bounded queue and one task), so a slow plugin never delays delivery or
  other plugins; when its queue is full, further events for it are dropped and counted.
  An exception is logged with the plugin's name and the pump carries on. Events reach
  one plugin in the order they happened.

Only the core fires these hooks. pluggy's hook wrappers (``wrapper=True``,
``hookwrapper=True``) are refused at start-up: the node calls implementations one at a
time to isolate plugins from each other. Order follows pluggy (last registered first,
``tryfirst``/``trylast``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

if TYPE_CHECKING:
    import trio

    from .cluster.membership import MemberEvent
    from .plugin_api import FrameHandler, Message, PluginContext, Route

hookspec = pluggy.HookspecMarker("chatnode")
hookimpl = pluggy.HookimplMarker("chatnode")

F = TypeVar("F", bound=Callable[..., Any])
KINDS = ("collector", "lifecycle", "gate", "notification")


def _kind(kind: str, *, firstresult: bool = False) -> Callable[[F], F]:
    def mark(fn: F) -> F:
        fn.chatnode_kind = kind  # type: ignore[attr-defined]
        return hookspec(firstresult=firstresult)(fn)

    return mark


def collector(fn: F | None = None, *, firstresult: bool = False) -> Any:
    """Mark a collector hookspec (plugins may declare their own: ``register_hookspecs``).
    With ``firstresult``, the first non-None result (in call order) is the answer."""
    return _kind("collector", firstresult=firstresult) if fn is None else _kind("collector")(fn)


lifecycle = _kind("lifecycle")
gate = _kind("gate")
notification = _kind("notification")


# -- collectors: called once at start-up -----------------------------------------------


@collector
def register_settings() -> tuple[str, type] | None:
    """Declare the plugin's config section, ``[plugins.<name>]``.

    :return: ``(name, cls)`` where ``cls`` is a frozen attrs class with defaults. The
        section is structured with unknown keys forbidden, so a typo stops start-up (and
        ``chatnode check-config`` finds it); the result is ``ctx.settings``.

    Collector. Fires: once, before anything starts.
    """


@collector
def register_error_codes() -> dict[str, tuple[int, str]] | None:
    """Declare error codes of the plugin's own: ``{"code": (http_status, meaning)}``.

    A ``PluginError("code", "why")`` raised in a route, a frame handler or a gate then
    reaches the client as ``code``. A code the core or another plugin declares stops
    start-up.

    Collector. Fires: once, before anything starts.
    """


@collector
def register_hookspecs() -> Any:
    """Declare hooks of the plugin's own: a module or class whose functions carry
    ``node.collector`` or ``node.notification``. Other plugins implement them; only the
    declaring plugin fires them (``ctx.collect``, ``ctx.notify``). Implement them with
    ``@hookimpl(optionalhook=True)`` when the declaring plugin may be disabled.

    Collector. Fires: once, before anything starts.
    """


@collector
def register_routes(ctx: PluginContext) -> list[Route] | None:
    """Add HTTP routes: a list of ``node.Route(method, path, handler, admin=..., max_body=...)``.

    ``handler(request, **path_params)`` gets a ``node.Request`` and returns a
    ``node.Response`` or a JSON-able dict. ``await request.user_id()`` authenticates the
    bearer token (or raises ``unauthorized``); admin routes need the admin token. A
    ``ChatError``/``PluginError`` answers with its code, ``Reject`` with ``403 rejected``,
    any other exception (logged with the plugin's name) with ``500 internal``.

    Collector. Fires: once, before the node listens.
    """


@collector
def register_frame_types(ctx: PluginContext) -> dict[str, FrameHandler] | None:
    """Add client event types to the chat socket: ``{"type": handler}``.

    ``await handler(client, event)`` runs in the connection's reader task; ``client`` is
    a ``node.Client`` (``user_id``, ``device_id``, ``send(event)``). Validate with
    ``node.check_fields``/``get_id``/``get_int``/``get_str``; raise ``PluginError`` (or a
    documented code) to answer with an ``error`` event, ``Reject`` for ``rejected``. Any
    other exception is logged with the plugin's name and answered ``internal``; the
    connection stays open. A type the core or another plugin handles stops start-up.

    Collector. Fires: once, before the node listens.
    """


# -- lifecycle -------------------------------------------------------------------------


@lifecycle
def startup(ctx: PluginContext, nursery: trio.Nursery) -> None:
    """The node is up (storage open, sequencer running) and about to listen.

    :param nursery: where the plugin starts its background tasks; cancelled after
        ``shutdown``.

    Lifecycle, awaited. Failure: start-up fails with the plugin's name.
    """


@lifecycle
def shutdown(ctx: PluginContext) -> None:
    """The node stopped listening and is about to close storage; flush what you hold.

    Lifecycle, awaited with a time limit, shielded from cancellation. Failure: logged; the
    other plugins' ``shutdown`` still run.
    """


# -- gates: every way content enters ----------------------------------------------------


@gate
def check_message(ctx: PluginContext, user_id: int, chat_id: int, content: Mapping[str, Any]) -> None:
    """A message is about to be stored: a client's ``send`` of any kind (text, media,
    ``edit`` with its new text, ``delete``) or a plugin's ``post_message``.

    :param content: the validated content (``kind``, ``text``, ``target``, ...): a
        read-only mapping (lists in it are tuples); assigning to it raises ``TypeError``.

    Gate, awaited in the requester's task before the message reaches the sequencer.
    Raise ``Reject``/``PluginError`` to refuse it; nothing is stored.
    """


@gate
def prepare_message(ctx: PluginContext, user_id: int, chat_id: int, content: Mapping[str, Any]
                    ) -> dict[str, Any] | None:
    """Transform a new message (not an edit or deletion) after ``check_message`` passed.

    :param content: the content so far, read-only as in ``check_message``.
    :return: ``None`` to keep it, or a new content dict (the next plugin sees that one),
        e.g. ``{**content, "text": ...}``.
        The media plugin swaps an upload's id for its metadata here.

    Gate, awaited in the requester's task. Raise to refuse, as in ``check_message``.
    """


@gate
def check_registration(ctx: PluginContext, username: str, display_name: str, address: str) -> None:
    """An account is about to be created (``POST /api/register``).

    :param address: the client's address.

    Gate, awaited before the password is hashed. Raise to refuse; nothing is stored.
    """


@gate
def check_join(ctx: PluginContext, chat_id: int, user_ids: list[int], by: int) -> None:
    """Users are about to become members of a group: its creation (``chat_id`` 0) or
    members added by ``by``.

    Gate, awaited before the change reaches the sequencer. Raise to refuse; nothing changes.
    """


@gate
def check_upload(ctx: PluginContext, user_id: int, mime: str, size: int, name: str | None) -> None:
    """An upload is about to be stored (its type judged from the content, its size known).

    Gate, run by a plugin that takes uploads (``ctx.check_upload``) before it stores
    anything. Raise to refuse.
    """


@gate
def check_photo(ctx: PluginContext, user_id: int, chat_id: int, media_id: int) -> None:
    """``user_id`` is about to make upload ``media_id`` their profile photo (``chat_id`` 0)
    or the photo of the group ``chat_id`` (they are one of its admins). Refuse by raising;
    nothing changes. The media plugin refuses what is not an image the user uploaded, and
    notes a group's photo so that it serves it to the group's members.

    Gate. Without any implementation, photos are refused (they need the media plugin).
    """


# -- notifications ----------------------------------------------------------------------


@notification
def on_message_stored(ctx: PluginContext, message: Message) -> None:
    """A log entry was durably stored (any kind: system entries, edits, deletions too).

    Notification (after the commit and after fan-out to connected devices).
    """


@notification
def on_recipients_offline(ctx: PluginContext, message: Message, user_ids: list[int]) -> None:
    """A content message was stored for members who had no device connected when it was
    offered to them (to any node of a cluster; the sender never counts). Fired once, by
    the node that stored it.

    Notification. Used by push.
    """


@notification
def on_delivered(ctx: PluginContext, chat_id: int, user_id: int, seq: int, previous: int) -> None:
    """A device of ``user_id`` acknowledged everything up to ``seq`` in the chat.

    :param previous: the user's delivered cursor before this advance.

    Notification (once per advance of the user's delivered cursor).
    """


@notification
def on_read(ctx: PluginContext, chat_id: int, user_id: int, seq: int, previous: int) -> None:
    """``user_id`` has read everything up to ``seq`` in the chat.

    :param previous: the user's read cursor before this advance.

    Notification (once per advance of the user's read cursor, also when they send).
    """


@notification
def on_reaction(ctx: PluginContext, chat_id: int, seq: int, message_id: int, user_id: int, emoji: str,
                author_id: int) -> None:
    """``user_id`` reacted with ``emoji`` to message ``seq`` (``message_id``) of the chat,
    which ``author_id`` sent (another member, who can still see it). Not fired when a
    reaction is taken back, nor for reactions to one's own messages.

    Notification (after the reaction is stored and sent to the members). Used by push.
    """


@notification
def on_user_online(ctx: PluginContext, user_id: int) -> None:
    """The first device of a user connected (in a cluster: to any node; fired once, on
    the user's home node).

    Notification.
    """


@notification
def on_user_offline(ctx: PluginContext, user_id: int) -> None:
    """The last device of a user disconnected (in a cluster: from every node; fired once,
    on the user's home node).

    Notification.
    """


@notification
def on_device_revoked(ctx: PluginContext, user_id: int, device_id: int) -> None:
    """A device of ``user_id`` was logged out: its token is deleted, by ``POST /api/logout``,
    ``DELETE /api/me/devices/{id}``, a password change (once for each other device) or an
    admin (docs/admin.md; devices logged out offline are told when a node next starts).

    Drop whatever the plugin keeps for that device: a logged-out device must get nothing
    more for the account (the push plugin deletes the push targets it registered).

    Notification (once per device, after the deletion is committed and its sockets are
    closed).
    """


@notification
def on_membership_changed(ctx: PluginContext, chat_id: int, change: dict[str, Any]) -> None:
    """Group membership or settings changed.

    :param change: ``{"event": "created" | "added" | "removed" | "left" | "promoted" |
        "demoted" | "renamed" | "ttl_changed" | "photo_changed" | "photo_removed", "by": user
        id, "users": [user ids], ...}``
        (the same content as the system entry in the chat).

    Notification.
    """


@notification
def on_cluster_event(ctx: PluginContext, event: MemberEvent) -> None:
    """A cluster member joined, was updated, became suspect, failed or left.

    Notification.
    """
