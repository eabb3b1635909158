"""What a page of history carries besides the log entries themselves, for the user who
asks: each message's current reactions (node/core/reactions.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .reactions import reactions_between

if TYPE_CHECKING:
    from .services import Services


async def annotate(node: Services, user_id: int, chat_id: int, messages: list[dict[str, Any]]) -> None:
    """Add `reactions` to the messages (oldest first) that have any."""
    if not messages:
        return
    found = await reactions_between(node.storage, chat_id, messages[0]["seq"], messages[-1]["seq"])
    for message in messages:
        reactions = found.get(message["seq"])
        if reactions and message.get("kind") != "deleted":
            message["reactions"] = reactions
