"""The admin API for accounts, devices, chats and the node (docs/admin.md): what
`chatnode admin` calls on a running node. Every route needs the admin token (or, with none
configured, a client on loopback), as every /api/admin/ route does."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from quart import Response, request
from quart_trio import QuartTrio

from ..cluster.status import cluster_view
from ..core.admin import Admin
from ..core.errors import bad_request

if TYPE_CHECKING:
    from ..app import Node


def node_identity(node: Node, started: int) -> dict[str, Any]:
    """Who and what the node is: `GET /api/admin/node`'s `node`."""
    info = node.storage.info
    return {"id": node.config.node.id, "name": node.config.node.name, "version": node.version,
            "http_url": node.http_url, "ws_url": node.ws_url, "started": started,
            "engine": info.name, "schema_version": info.schema_version, "location": info.location,
            "cluster": node.cluster is not None}


def add_admin_routes(
    app: QuartTrio,
    node: Node,
    *,
    json_body: Callable[[], Awaitable[dict[str, Any]]],
    json_response: Callable[..., Response],
    path_id: Callable[[str], int],
    query_int: Callable[..., int | None],
    query_flag: Callable[[str], bool],
    require_admin: Callable[[], None],
) -> None:
    admin = Admin(node.accounts, node.storage, node)
    started = int(time.time() * 1000)  # the app is made as the node starts

    @app.get("/api/admin/node")
    async def admin_node() -> Response:
        require_admin()
        out: dict[str, Any] = {"node": node_identity(node, started), "statistics": node.statistics()}
        counts = query_flag("counts")
        if node.cluster is not None:  # the chats each member should own: a read of every chat, as counts are
            out["cluster"] = await cluster_view(node, expected=counts)
        if counts:
            out["counts"] = await admin.counts()
        return json_response(out)

    @app.get("/api/admin/users")
    async def admin_users() -> Response:
        require_admin()
        limit = query_int("limit", 100, 1, 1000) or 100
        query = request.args.get("q")
        prefix, after = request.args.get("prefix", ""), request.args.get("after", "")
        if query is not None and len(query) > 64:
            raise bad_request("'q' is at most 64 characters")
        if len(prefix) > 32 or len(after) > 32:
            raise bad_request("'prefix' and 'after' are at most 32 characters")
        if query is not None:
            return json_response(await admin.find_users(query, limit))
        return json_response(await admin.list_users(prefix, after, limit))

    @app.post("/api/admin/users")
    async def admin_create_user() -> Response:
        require_admin()
        return json_response(await admin.create_user(await json_body()), 201)

    @app.get("/api/admin/users/<ref>")
    async def admin_user(ref: str) -> Response:
        require_admin()
        return json_response(await admin.show_user(ref))

    @app.delete("/api/admin/users/<ref>")
    async def admin_delete_user(ref: str) -> Response:
        require_admin()
        return json_response(await admin.delete_user(ref))

    @app.post("/api/admin/users/<ref>/disable")
    async def admin_disable(ref: str) -> Response:
        require_admin()
        return json_response(await admin.set_disabled(ref, True))

    @app.post("/api/admin/users/<ref>/enable")
    async def admin_enable(ref: str) -> Response:
        require_admin()
        return json_response(await admin.set_disabled(ref, False))

    @app.post("/api/admin/users/<ref>/password")
    async def admin_password(ref: str) -> Response:
        require_admin()
        return json_response(await admin.set_password(ref, await json_body()))

    @app.get("/api/admin/users/<ref>/devices")
    async def admin_devices(ref: str) -> Response:
        require_admin()
        return json_response(await admin.devices(ref))

    @app.delete("/api/admin/users/<ref>/devices")
    async def admin_revoke_all(ref: str) -> Response:
        require_admin()
        return json_response(await admin.revoke_devices(ref, None))

    @app.delete("/api/admin/users/<ref>/devices/<device_id>")
    async def admin_revoke(ref: str, device_id: str) -> Response:
        require_admin()
        return json_response(await admin.revoke_devices(ref, [device_id]))

    @app.get("/api/admin/chats/<chat_id>")
    async def admin_chat(chat_id: str) -> Response:
        require_admin()
        return json_response(await admin.chat(path_id(chat_id), former=query_flag("all")))
