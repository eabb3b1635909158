"""`[plugins.push]`: what a notification says, how often, and how hard the node tries."""

from __future__ import annotations

import attrs


def _positive(_instance: object, attribute: attrs.Attribute, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name}: must be > 0, got {value!r}")


def _not_negative(_instance: object, attribute: attrs.Attribute, value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name}: must be >= 0, got {value!r}")


@attrs.frozen
class PushSettings:
    """The push plugin's settings; every field has a default (docs/push.md)."""

    previews: bool = False  # put the sender's name and the message text in notifications
    preview_chars: int = attrs.field(default=200, validator=_positive)  # text cut to this many characters
    collapse_window: float = attrs.field(default=10.0, validator=_not_negative)  # seconds: one notification per target
    max_attempts: int = attrs.field(default=5, validator=_positive)  # tries per notification
    retry_base: float = attrs.field(default=2.0, validator=_positive)  # seconds before the first retry, doubling ...
    retry_max: float = attrs.field(default=300.0, validator=_positive)  # ... up to this
    timeout: float = attrs.field(default=10.0, validator=_positive)  # seconds per request to a push service
    workers: int = attrs.field(default=4, validator=_positive)  # notifications sent at once
    queue_size: int = attrs.field(default=1024, validator=_positive)  # targets waiting for a worker
    ttl: int = attrs.field(default=86400, validator=_not_negative)  # Web Push TTL: seconds a push service keeps it
    max_targets_per_user: int = attrs.field(default=20, validator=_positive)  # the oldest goes beyond this
    vapid_subject: str = ""  # contact for push services (mailto: or https:); default http.public_url
    allow_private_endpoints: bool = False  # allow http:// and loopback / private addresses (LAN, tests)
