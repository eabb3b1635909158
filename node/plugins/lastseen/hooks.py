"""The hook the last-seen plugin declares (and fires): other plugins may follow typing."""

from __future__ import annotations

from ... import PluginContext, notification


@notification
def on_typing(ctx: PluginContext, chat_id: int, user_id: int, typing: bool) -> None:
    """A member started (or stopped) typing in a chat; fired at most once per
    ``typing_interval`` per user and chat.

    Notification.
    """
