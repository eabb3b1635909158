"""REST routes of chat management, reactions, stars, deleting for me, search, reports and
photos (docs/protocol.md). Added to the app by `create_app` (node/web/api.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from quart import Response
from quart_trio import QuartTrio

from ..core.accounts import Device
from ..core.chatprefs import ClearHistory, SetChatPrefs, check_changes
from ..core.reports import dismiss_report, file_report, list_reports
from ..core.views import chat_summary

if TYPE_CHECKING:
    from ..app import Node


def add_feature_routes(
    app: QuartTrio,
    node: Node,
    *,
    json_body: Callable[[], Awaitable[dict[str, Any]]],
    json_response: Callable[..., Response],
    current_device: Callable[[Node], Awaitable[Device]],
    path_id: Callable[[str], int],
    query_int: Callable[..., int | None],
    require_admin: Callable[[], None],
) -> None:
    chats = node.chats

    # -- chat management -----------------------------------------------------------

    @app.patch("/api/chats/<chat_id>/prefs")
    async def chat_prefs(chat_id: str) -> Response:
        device = await current_device(node)
        changes = check_changes(await json_body())
        chat = await chats.run(SetChatPrefs(user_id=device.user_id, chat_id=path_id(chat_id), changes=changes))
        return json_response({"chat": await chat_summary(node, device.user_id, chat)})

    @app.post("/api/chats/<chat_id>/clear")
    async def clear_history(chat_id: str) -> Response:
        device = await current_device(node)
        chat = await chats.run(ClearHistory(user_id=device.user_id, chat_id=path_id(chat_id)))
        return json_response({"chat": await chat_summary(node, device.user_id, chat)})

    @app.post("/api/chats/<chat_id>/delete")
    async def delete_for_me(chat_id: str) -> Response:
        device = await current_device(node)
        await chats.run(ClearHistory(user_id=device.user_id, chat_id=path_id(chat_id), hide=True))
        return Response(b"", status=204)

    # -- reports -------------------------------------------------------------------

    @app.post("/api/reports")
    async def report() -> Response:
        device = await current_device(node)
        return json_response({"report": await file_report(node, device.user_id, await json_body())}, 201)

    @app.get("/api/admin/reports")
    async def admin_reports() -> Response:
        require_admin()
        before = query_int("before", None, 1, (1 << 63) - 1)
        limit = query_int("limit", 50, 1, 500)
        return json_response(await list_reports(node, before, limit))

    @app.delete("/api/admin/reports/<report_id>")
    async def admin_dismiss_report(report_id: str) -> Response:
        require_admin()
        await dismiss_report(node, path_id(report_id))
        return Response(b"", status=204)
