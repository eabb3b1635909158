"""REST routes of chat management, reactions, stars, deleting for me, search, reports and
photos (docs/protocol.md). Added to the app by `create_app` (node/web/api.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, overload

import orjson
from quart import Response, request
from quart_trio import QuartTrio

from ..core.accounts import Device
from ..core.chatprefs import ClearHistory, SetChatPrefs, check_changes
from ..core.errors import ChatError, bad_request
from ..core.former import left_at
from ..core.personal import delete_for_me, set_star, starred_list
from ..core.profiles import media_id_of, set_group_photo, set_profile_photo
from ..core.reactions import SetReaction, check_emoji, reactions_between
from ..core.reports import dismiss_report, file_report, list_reports
from ..core.search import search
from ..core.snowflake import parse_id
from ..core.views import chat_summary

if TYPE_CHECKING:
    from ..app import Node

MAX_REACTION_SPAN = 1000  # messages per GET /api/chats/{id}/reactions


class QueryInt(Protocol):
    """node.web.api.query_int: a query parameter in [lo, hi], or `default` when absent."""

    @overload
    def __call__(self, name: str, default: int, lo: int, hi: int) -> int: ...
    @overload
    def __call__(self, name: str, default: None, lo: int, hi: int) -> int | None: ...


def add_feature_routes(
    app: QuartTrio,
    node: Node,
    *,
    json_body: Callable[[], Awaitable[dict[str, Any]]],
    json_response: Callable[..., Response],
    current_device: Callable[[Node], Awaitable[Device]],
    path_id: Callable[[str], int],
    query_int: QueryInt,
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
    async def delete_chat_for_me(chat_id: str) -> Response:
        device = await current_device(node)
        await chats.run(ClearHistory(user_id=device.user_id, chat_id=path_id(chat_id), hide=True))
        return Response(b"", status=204)

    # -- reactions -----------------------------------------------------------------

    async def react(device: Device, chat_id: str, seq: str, emoji: str | None) -> Response:
        cid, number = path_id(chat_id), path_id(seq)
        chat = await chats.load(cid)
        if chat is None or chat.member(device.user_id) is None:
            raise ChatError("not_member")
        rows = await chats.read_range(cid, number, number, 1)
        if not rows:
            raise ChatError("not_found", "no such message in this chat")
        message_id = int(orjson.loads(rows[0][1])["id"])
        event = await chats.run(SetReaction(user_id=device.user_id, chat_id=cid, seq=number, message_id=message_id,
                                            emoji=emoji))
        return json_response({"reaction": event})

    @app.put("/api/chats/<chat_id>/messages/<seq>/reaction")
    async def set_reaction(chat_id: str, seq: str) -> Response:
        device = await current_device(node)  # who is asking comes first
        body = await json_body()
        if set(body) != {"emoji"}:
            raise bad_request("give 'emoji' (and nothing else)")
        return await react(device, chat_id, seq, check_emoji(body["emoji"]))

    @app.delete("/api/chats/<chat_id>/messages/<seq>/reaction")
    async def remove_reaction(chat_id: str, seq: str) -> Response:
        return await react(await current_device(node), chat_id, seq, None)

    @app.get("/api/chats/<chat_id>/reactions")
    async def list_reactions(chat_id: str) -> Response:
        device = await current_device(node)
        chat = await chats.load(path_id(chat_id))
        visible = chat.visible_range(device.user_id) if chat is not None else None
        if chat is None or visible is None:
            raise ChatError("not_member")
        first = query_int("from", visible[0], 0, (1 << 63) - 1)
        last = query_int("to", visible[1], 0, (1 << 63) - 1)
        if last - first >= MAX_REACTION_SPAN:
            raise bad_request(f"ask for at most {MAX_REACTION_SPAN} messages at a time ('from' to 'to')")
        found = await reactions_between(node.storage, chat.id, max(first, visible[0]), min(last, visible[1]),
                                        until_ts=await left_at(node, chat, device.user_id))
        return json_response({"reactions": {str(seq): found[seq] for seq in sorted(found)}})

    # -- stars and deleting for me --------------------------------------------------

    @app.put("/api/chats/<chat_id>/messages/<seq>/star")
    async def star(chat_id: str, seq: str) -> Response:
        device = await current_device(node)
        await set_star(node, device.user_id, path_id(chat_id), path_id(seq), True)
        return Response(b"", status=204)

    @app.delete("/api/chats/<chat_id>/messages/<seq>/star")
    async def unstar(chat_id: str, seq: str) -> Response:
        device = await current_device(node)
        chat = await chats.load(path_id(chat_id))
        if chat is None or chat.visible_range(device.user_id) is None:
            raise ChatError("not_member")
        await set_star(node, device.user_id, chat.id, path_id(seq), False)
        return Response(b"", status=204)

    @app.get("/api/starred")
    async def starred() -> Response:
        device = await current_device(node)
        offset = query_int("offset", 0, 0, 1_000_000)
        limit = query_int("limit", 50, 1, 200)
        return json_response(await starred_list(node, device.user_id, offset, limit))

    @app.post("/api/chats/<chat_id>/messages/delete")
    async def delete_messages_for_me(chat_id: str) -> Response:
        device = await current_device(node)
        body = await json_body()
        seqs = body.get("seqs")
        if set(body) != {"seqs"} or not isinstance(seqs, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in seqs):
            raise bad_request("give 'seqs': a list of message seqs")
        await delete_for_me(node, device.user_id, path_id(chat_id), seqs)
        return Response(b"", status=204)

    # -- photos --------------------------------------------------------------------

    @app.put("/api/me/photo")
    async def set_my_photo() -> Response:
        device = await current_device(node)
        media_id = media_id_of(await json_body())
        return json_response({"user": await set_profile_photo(node, device.user_id, media_id)})

    @app.delete("/api/me/photo")
    async def remove_my_photo() -> Response:
        device = await current_device(node)
        return json_response({"user": await set_profile_photo(node, device.user_id, None)})

    @app.put("/api/chats/<chat_id>/photo")
    async def set_chat_photo(chat_id: str) -> Response:
        device = await current_device(node)
        media_id = media_id_of(await json_body())
        chat = await set_group_photo(node, device.user_id, path_id(chat_id), media_id)
        return json_response({"chat": await chat_summary(node, device.user_id, chat)})

    @app.delete("/api/chats/<chat_id>/photo")
    async def remove_chat_photo(chat_id: str) -> Response:
        device = await current_device(node)
        chat = await set_group_photo(node, device.user_id, path_id(chat_id), None)
        return json_response({"chat": await chat_summary(node, device.user_id, chat)})

    # -- search --------------------------------------------------------------------

    @app.get("/api/search")
    async def search_messages() -> Response:
        device = await current_device(node)
        chat = request.args.get("chat")
        try:
            chat_id = parse_id(chat) if chat is not None else None
        except ValueError:
            raise bad_request("'chat' must be a chat id") from None
        limit = query_int("limit", 20, 1, 100)
        return json_response(await search(node, device.user_id, request.args.get("q"),
                                          chat_id=chat_id, limit=limit,
                                          before=request.args.get("before")))

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
