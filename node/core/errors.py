"""Error codes shared by the REST API and the WebSocket protocol.

Each code has one HTTP status and one meaning; docs/protocol.md lists them all and a
test keeps that list in step with `ERROR_CODES`.
"""

from __future__ import annotations

#: code -> (HTTP status, meaning)
ERROR_CODES: dict[str, tuple[int, str]] = {
    "bad_request": (400, "a field is missing, has the wrong type or an invalid value"),
    "invalid_json": (400, "the frame or body is not valid JSON"),
    "unknown_type": (400, "the event's type is not one the server knows"),
    "too_large": (413, "a message, frame or upload exceeds its size limit"),
    "unsupported_media_type": (415, "the upload's content is not of a type this node accepts"),
    "quota_exceeded": (413, "your uploads would take more than a user may keep on this node"),
    "storage_full": (507, "the node is short of disk space and takes no uploads for now"),
    "too_many_events": (413, "a frame carries more events than limits.max_events_per_frame"),
    "invalid_username": (400, "usernames are 3-32 characters: a-z, 0-9, '_' and '.', starting with a letter or digit"),
    "weak_password": (400, "the password is shorter than accounts.min_password_length"),
    "username_taken": (409, "another account has this username"),
    "registration_closed": (403, "this node does not accept new accounts"),
    "unauthorized": (401, "missing, unknown or revoked token, or wrong username or password"),
    "account_disabled": (403, "an admin disabled this account"),
    "wrong_password": (403, "the current password given to change the password is wrong"),
    "forbidden": (403, "you may not do this (e.g. you are not an admin of the group)"),
    "not_member": (403, "you are not a member of that chat"),
    "blocked": (403, "the other user blocked you, or you blocked them"),
    "not_found": (404, "no such user, chat, message or media"),
    "conflict": (409, "the request conflicts with the current state"),
    "group_full": (409, "the group already has limits.max_group_members members"),
    "edit_window_passed": (409, "the message is older than the edit window"),
    "timeout": (408, "the request body did not arrive in time"),
    "rate_limited": (429, "too many requests, frames, messages or uploaded bytes; slow down and retry later"),
    "too_many_connections": (429, "the user already has limits.max_connections_per_user connections"),
    "not_hello": (400, "the first frame of a connection must be a hello"),
    "rejected": (403, "a plugin rejected the message"),
    "unavailable": (503, "the node is shutting down, overloaded or cannot write; retry"),
    "internal": (500, "an internal error; the request changed nothing"),
}


class ChatError(Exception):
    """A request that cannot be served; becomes an error frame or an HTTP error body."""

    retry_after: float | None = None  # seconds until a retry can succeed, when known (HTTP Retry-After)

    def __init__(self, code: str, message: str | None = None, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        default_status, meaning = ERROR_CODES[code]
        self.code = code
        self.message = message or meaning
        self.status = status or default_status
        self.retry_after = retry_after
        super().__init__(f"{code}: {self.message}")

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def bad_request(message: str) -> ChatError:
    return ChatError("bad_request", message)


#: WebSocket close codes used by the server (docs/protocol.md, "Close codes").
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # the node is shutting down; reconnect elsewhere or later
CLOSE_TOO_BIG = 1009  # a frame exceeded limits.max_frame_bytes
CLOSE_INTERNAL = 1011
CLOSE_PROTOCOL = 4000  # first frame was not a valid hello
CLOSE_UNAUTHORIZED = 4001  # bad or revoked token
CLOSE_HELLO_TIMEOUT = 4002  # no hello within limits.hello_timeout
CLOSE_LOGGED_OUT = 4003  # the token was revoked (logout) while connected
CLOSE_TOO_SLOW = 4008  # the outgoing queue overflowed; reconnect and resync
CLOSE_TOO_MANY_CONNECTIONS = 4009  # limits.max_connections_per_user reached

CLOSE_CODES: dict[int, str] = {
    CLOSE_NORMAL: "normal close",
    CLOSE_GOING_AWAY: "server shutting down",
    CLOSE_TOO_BIG: "frame too big",
    CLOSE_INTERNAL: "internal error",
    CLOSE_PROTOCOL: "protocol error",
    CLOSE_UNAUTHORIZED: "unauthorized",
    CLOSE_HELLO_TIMEOUT: "hello timeout",
    CLOSE_LOGGED_OUT: "logged out",
    CLOSE_TOO_SLOW: "too slow: outgoing queue full, resync",
    CLOSE_TOO_MANY_CONNECTIONS: "too many connections",
}
