"""The hooks a chatnode plugin may implement (pluggy project name ``chatnode``).

Every hook is called by keyword; an implementation may accept any subset of the
arguments. Implementations may be ``def`` or ``async def`` unless the hook says it is
synchronous. There are four kinds, and each has one failure policy:

- **collectors** (``register_*``): synchronous, called once at start-up; what they return
  is gathered from every plugin. An exception stops start-up with the plugin's name.
- **lifecycle** (``startup``, ``shutdown``): awaited in turn. A failing ``startup`` stops
  start-up; a failing ``shutdown`` is logged and the others still run.
- **gate** (``prepare_message``): awaited in the sender's task before the message is
  stored; it may transform the message or veto it by raising ``node.Reject`` (or a
  ``node.ChatError``, whose code the sender gets). Any other exception is logged and
  rejects the message (fails closed).
- **notifications** (``on_*``): fire-and-forget. Each plugin has its own event pump (a
  bounded queue and one task), so a slow plugin never delays delivery or other plugins;
  when its queue is full, further events for it are dropped and counted. An exception is
  logged with the plugin's name and the pump carries on. Events reach one plugin in the
  order they happened.

Async work: a plugin that needs background tasks starts them in ``startup`` on the
nursery it is given; they are cancelled after ``shutdown``. Notification hooks that await
(network calls, for instance) only hold up that plugin's own pump.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import trio

    from .app import Node
    from .cluster.membership import MemberEvent
    from .core.session import FrameHandler

hookspec = pluggy.HookspecMarker("chatnode")
hookimpl = pluggy.HookimplMarker("chatnode")


# -- collectors: called once at start-up -----------------------------------------------


@hookspec
def register_settings() -> tuple[str, type] | None:
    """Declare this plugin's config section, ``[plugins.<name>]``.

    :return: ``(name, cls)`` where ``cls`` is a frozen attrs class with defaults. The
        section is structured with unknown keys forbidden, so a typo stops start-up; the
        result is available as ``node.plugins.settings(name)``.

    Synchronous. Fires: once, before storage opens.
    """


@hookspec
def register_routes(node: Node) -> list[tuple[str, str, Any]] | None:
    """Add HTTP routes: a list of ``(method, path, handler)``.

    ``handler`` is an async function taking the path parameters as keyword arguments and
    returning a quart response value (use ``node.json_response``). Inside it,
    ``node.current_device()`` authenticates the request or raises ``unauthorized``.

    Synchronous. Fires: once, before the HTTP listener starts.
    """


@hookspec
def register_frame_types(node: Node) -> dict[str, FrameHandler] | None:
    """Add WebSocket event types: ``{"type": handler}``.

    ``handler(session, event)`` is awaited in the sending connection's reader task; it may
    raise ``node.ChatError`` to answer with an ``error`` event. A type already taken
    (by the core or another plugin) stops start-up.

    Synchronous. Fires: once, before the chat listener starts.
    """


@hookspec
def register_push_providers(node: Node) -> dict[str, Any] | None:
    """Add push providers: ``{"kind": provider}``, used by the push plugin.

    A device registers a target with ``{"kind": "<kind>", "endpoint": ..., ...}``; the
    provider of that kind validates it (``provider.check_target(body) -> dict``) and
    delivers notifications to it (``await provider.send(target, notification)``; raise
    ``PushGone`` from ``node.plugins.push.providers`` when the endpoint no longer exists).
    The push plugin itself provides ``webpush`` and ``webhook``. A kind offered twice
    stops start-up.

    Synchronous. Fires: once, in the push plugin's ``startup``.
    """


# -- lifecycle -------------------------------------------------------------------------


@hookspec
def startup(node: Node, nursery: trio.Nursery) -> None:
    """The node is up (storage open, sequencer running) and about to listen.

    :param nursery: where the plugin starts its background tasks; cancelled after
        ``shutdown``.

    Awaited. Failure: start-up fails with the plugin's name.
    """


@hookspec
def shutdown(node: Node) -> None:
    """The node stopped listening and is about to close storage; flush what you hold.

    Awaited with a time limit, shielded from cancellation. Failure: logged; the other
    plugins' ``shutdown`` still run.
    """


# -- gate --------------------------------------------------------------------------------


@hookspec
def prepare_message(node: Node, user_id: int, chat_id: int, content: dict[str, Any]) -> dict[str, Any] | None:
    """A message is about to be stored: inspect, transform or veto it.

    :param content: the message content (``kind``, ``text``, ...), already validated.
    :return: ``None`` to keep it, or a new content dict (the next plugin sees that one).
        Raise ``node.Reject("why")`` to refuse it: the sender gets a ``rejected`` error
        and nothing is stored. Raise ``node.ChatError(code, "why")`` to refuse it with
        that documented code instead (e.g. ``not_found``).

    Awaited in the sender's reader task, in plugin order (LIFO, ``tryfirst``/``trylast``).
    Failure: any other exception rejects the message with ``internal`` (fails closed).
    """


# -- notifications -------------------------------------------------------------------------


@hookspec
def on_message_stored(node: Node, chat_id: int, message: dict[str, Any]) -> None:
    """A log entry was durably stored (any kind, system messages, edits and deletes too).

    :param message: the stored record, as clients receive it.

    Notification (after the commit, after fan-out).
    """


@hookspec
def on_recipients_offline(node: Node, chat_id: int, message: dict[str, Any], user_ids: list[int]) -> None:
    """A content message was stored for members who have no device online.

    Notification. Used by push.
    """


@hookspec
def on_delivered(node: Node, chat_id: int, user_id: int, seq: int, previous: int) -> None:
    """A device of ``user_id`` acknowledged everything up to ``seq`` in the chat.

    :param previous: the user's delivered cursor before this advance.

    Notification (once per advance of the user's delivered cursor).
    """


@hookspec
def on_read(node: Node, chat_id: int, user_id: int, seq: int, previous: int) -> None:
    """``user_id`` has read everything up to ``seq`` in the chat.

    :param previous: the user's read cursor before this advance.

    Notification (once per advance of the user's read cursor, also when they send).
    """


@hookspec
def on_user_online(node: Node, user_id: int) -> None:
    """The first device of a user connected to this node.

    Notification.
    """


@hookspec
def on_user_offline(node: Node, user_id: int) -> None:
    """The last device of a user disconnected from this node.

    Notification.
    """


@hookspec
def on_device_revoked(node: Node, user_id: int, device_id: int) -> None:
    """A device of ``user_id`` was logged out: its token is deleted, by ``POST /api/logout``,
    ``DELETE /api/me/devices/{id}`` or a password change (once for each other device).

    Drop whatever the plugin keeps for that device: a logged-out device must get nothing
    more for the account (the push plugin deletes the push targets it registered).

    Notification (once per device, after the deletion is committed and its sockets are
    closed; an exception is logged and the pump carries on).
    """


@hookspec
def on_membership_changed(node: Node, chat_id: int, change: dict[str, Any]) -> None:
    """Group membership or settings changed.

    :param change: ``{"event": "created" | "added" | "removed" | "left" | "promoted" |
        "demoted" | "renamed" | "ttl_changed", "by": user id, "users": [user ids], ...}``
        (the same content as the system message in the chat).

    Notification.
    """


@hookspec
def on_cluster_event(node: Node, event: MemberEvent) -> None:
    """A cluster member joined, was updated, became suspect, failed or left.

    Notification.
    """


@hookspec
def on_analytics_event(node: Node, event: dict[str, Any]) -> None:
    """An activity event for analytics (presence changes, typing, messages sent).

    :param event: ``{"event": name, "ts": ms, "user": id, ...}``. The built-in analytics
        plugin appends these to ``data_dir/analytics.jsonl`` when enabled.

    Notification.
    """
