"""What a page of history carries besides the log entries themselves, for the user who
asks: each message's current reactions (node/core/reactions.py), whether the user starred
it, and not the messages the user deleted for themselves (node/core/personal.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .personal import hidden_between, starred_between
from .reactions import reactions_between

if TYPE_CHECKING:
    from .services import Services


async def annotate(node: Services, user_id: int, chat_id: int, messages: list[dict[str, Any]], *,
                   until_ts: int | None = None) -> None:
    """Add `reactions` and `starred` to the messages (oldest first) that have them, and
    take out those deleted for the user (in place). `until_ts`: a former member's
    departure; reactions made after it are not theirs to see."""
    if not messages:
        return
    first, last = messages[0]["seq"], messages[-1]["seq"]
    hidden = await hidden_between(node.storage, user_id, chat_id, first, last)
    if hidden:
        messages[:] = [m for m in messages if m["seq"] not in hidden]
    found = await reactions_between(node.storage, chat_id, first, last, until_ts=until_ts)
    starred = await starred_between(node.storage, user_id, chat_id, first, last)
    for message in messages:
        reactions = found.get(message["seq"])
        if reactions and message.get("kind") != "deleted":
            message["reactions"] = reactions
        if message["seq"] in starred and message.get("kind") != "deleted":
            message["starred"] = True
