"""The hook the push plugin declares: other plugins add push providers."""

from __future__ import annotations

from typing import Any

from ... import PluginContext, collector


@collector
def register_push_providers(ctx: PluginContext) -> dict[str, Any] | None:
    """Add push providers: ``{"kind": provider}``.

    A device registers a target with ``{"kind": "<kind>", "endpoint": ..., ...}``; the
    provider of that kind validates it (``provider.check_target(body) -> dict``) and
    delivers notifications to it (``await provider.send(target, notification)``; raise
    ``PushGone`` from ``node.plugins.push.providers`` when the endpoint no longer exists).
    The push plugin itself provides ``webpush`` and ``webhook``. A kind offered twice
    stops start-up.

    Collector. Fires: once, in the push plugin's ``startup``.
    """
