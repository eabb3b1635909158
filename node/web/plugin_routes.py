"""Plugin HTTP routes on quart: `node.Route` in, quart's request and response adapted.

Plugins never see quart: their handlers get a `node.Request` (this module's
`PluginRequest`) and return a `node.Response` (or a dict, sent as JSON). That keeps the
plugin API stable whatever serves HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from quart import Response as QuartResponse
from quart import request

from ..plugin_api import Response, Route, json_response

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from ..app import Node


class PluginRequest:
    """`node.Request` over the current quart request."""

    __slots__ = ("_client_address", "_current_device", "_json_body")

    def __init__(self, json_body: Callable[..., Any], current_device: Callable[[], Any],
                 client_address: Callable[[], str]) -> None:
        self._json_body = json_body
        self._current_device = current_device
        self._client_address = client_address

    @property
    def method(self) -> str:
        return request.method

    @property
    def path(self) -> str:
        return request.path

    @property
    def args(self) -> Mapping[str, str]:
        return {key: request.args[key] for key in request.args}

    @property
    def headers(self) -> Mapping[str, str]:
        return request.headers  # type: ignore[return-value]

    @property
    def content_length(self) -> int | None:
        return request.content_length

    @property
    def remote_addr(self) -> str:
        return self._client_address()

    async def json(self, fields: Collection[str] | None = None) -> dict[str, Any]:
        return await self._json_body(fields)

    def body(self) -> AsyncIterator[bytes]:
        return request.body.__aiter__()

    async def user_id(self) -> int:
        return (await self._current_device()).user_id

    async def device_id(self) -> int:
        return (await self._current_device()).device_id


def to_quart(result: Response | dict[str, Any]) -> QuartResponse:
    response = json_response(result) if isinstance(result, dict) else result
    out = QuartResponse(response.body, status=response.status, headers=response.headers,
                        content_type=response.content_type)
    if not isinstance(response.body, bytes):
        out.timeout = None  # a large stream to a slow client may take longer than RESPONSE_TIMEOUT
    return out


def mount(app: QuartTrio, node: Node, routes: list[Route], *, json_body: Callable[..., Any],
          current_device: Callable[[Node], Any], client_address: Callable[[], str],
          require_admin: Callable[[], None]) -> None:
    """Add every plugin route to the app."""
    adapter = PluginRequest(json_body, lambda: current_device(node), client_address)
    for route in routes:
        if not isinstance(route, Route):
            raise TypeError(f"register_routes must return node.Route objects, got {route!r}")

        def make_view(route: Route) -> Callable[..., Any]:
            async def view(**params: str) -> QuartResponse:
                if route.admin:
                    require_admin()
                return to_quart(await route.handler(adapter, **params))

            return view

        app.add_url_rule(route.path, f"plugin:{route.method}:{route.path}", make_view(route),
                         methods=[route.method.upper()])
