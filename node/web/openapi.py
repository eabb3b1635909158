"""The HTTP API as an OpenAPI 3.1 document, served at ``GET /api/openapi.json``.

Written from docs/protocol.md, docs/media.md, docs/push.md and docs/admin.md, which stay the
prose; this is the machine-readable contract. tests/test_openapi.py keeps it true: every
route the node serves (with its built-in plugins) is described here and everything described
is served, and schemathesis sends the node what the document allows (and what it does not)
and checks every answer against it.

The served document lists what this node serves: an operation of a plugin that is switched
off is left out, and a route of a third-party plugin that is not described here appears with
a stub (its plugin documents it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

JSON = "application/json"

# -- schemas -------------------------------------------------------------------------------


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: Iterable[str] = (), closed: bool = False, **properties: Any) -> dict[str, Any]:
    """An object schema; `closed`: no other property is accepted (requests the node checks
    field by field)."""
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    required = list(required)
    if required:
        schema["required"] = required
    if closed:
        schema["additionalProperties"] = False
    return schema


def array(items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "array", "items": items, **extra}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


STRING = {"type": "string"}
INT = {"type": "integer"}
SEQ = {"type": "integer", "minimum": 0}
BOOL = {"type": "boolean"}
MS = {"type": "integer", "description": "Unix milliseconds"}

SCHEMAS: dict[str, Any] = {
    "Id": {"type": "string", "pattern": "^[0-9]{1,20}$",
           "description": "a Snowflake id as a decimal string (never a JSON number)"},
    "Error": obj(["error"], error=obj(["code", "message"], code=STRING, message=STRING)),
    "User": obj(["id", "username", "display_name", "created"], id=ref("Id"), username=STRING, display_name=STRING,
                created=MS, photo=nullable(ref("Id"))),
    "AdminUser": obj(["id", "username", "display_name", "created", "disabled", "deleted", "service"],
                     id=ref("Id"), username=STRING, display_name=STRING, created=MS, photo=nullable(STRING),
                     disabled=nullable(MS), deleted=nullable(MS), service=BOOL),
    "Settings": obj(["last_seen"], read_receipts=BOOL, last_seen={"enum": ["everyone", "contacts", "nobody"]}),
    "Message": obj(["id", "chat", "seq", "from", "ts", "kind"], id=ref("Id"), chat=ref("Id"), seq=SEQ,
                   ts=MS, kind=STRING, text=STRING, media=obj(),
                   client_msg_id=STRING, status={"enum": ["sent", "delivered", "read"]},
                   **{"from": nullable(ref("Id"))}),  # type: ignore[arg-type]  # "from" names no parameter
    "Chat": obj(["id", "kind", "title", "created", "updated", "last_seq", "from_seq", "read_seq", "delivered_seq",
                 "unread", "hidden", "last_message", "ttl", "muted", "muted_until", "archived", "pinned",
                 "marked_unread", "cleared_seq"],
                id=ref("Id"), kind={"enum": ["direct", "group"]}, title=STRING, created=MS, updated=MS,
                last_seq=SEQ, from_seq=SEQ, read_seq=SEQ, delivered_seq=SEQ, unread=SEQ, hidden=BOOL,
                last_message=nullable(ref("Message")), ttl=SEQ, left_seq=SEQ, peer=nullable(ref("User")),
                peer_read_seq=nullable(SEQ), peer_delivered_seq=SEQ, role=nullable(STRING), members=SEQ,
                photo=nullable(STRING), muted=BOOL, muted_until=nullable(MS), archived=BOOL, pinned=nullable(MS),
                marked_unread=BOOL, cleared_seq=SEQ),
    "Media": obj(["id", "mime", "size", "thumbnail"], id=ref("Id"), mime=STRING, size=SEQ, name=STRING,
                 width=SEQ, height=SEQ, duration={"type": "number"}, thumbnail=BOOL),
    "Device": obj(["device_id", "name", "created", "last_used", "expires"], device_id=ref("Id"), name=STRING,
                  created=MS, last_used=nullable(MS), expires=nullable(MS), current=BOOL),
    "Reaction": obj(["chat", "seq", "message", "user", "emoji", "ts"], type=STRING, chat=ref("Id"), seq=SEQ,
                    message=ref("Id"), user=ref("Id"), emoji=nullable(STRING), ts=MS),
    "PushTarget": obj(["id", "kind", "endpoint", "created"], id=ref("Id"), kind=STRING, endpoint=STRING,
                      created=MS),
    "Presence": obj(["user", "online", "last_seen"], user=ref("Id"), online=nullable(BOOL),
                    last_seen=nullable(MS), hidden=BOOL),
}


# -- operations ----------------------------------------------------------------------------

#: What each error status stands for (the codes: docs/protocol.md, "Error codes").
STATUS_TEXT = {
    400: "bad input (`bad_request`, `invalid_json`, `invalid_username`, `weak_password`)",
    401: "no valid token, or wrong username or password (`unauthorized`)",
    403: "not allowed (`forbidden`, `not_member`, `blocked`, `registration_closed`, `wrong_password`, ...)",
    404: "no such thing (`not_found`)",
    408: "the body did not arrive in time (`timeout`)",
    409: "conflicts with the current state (`conflict`, `username_taken`, `group_full`, ...)",
    413: "too large (`too_large`, `quota_exceeded`)",
    415: "not a type of upload this node accepts (`unsupported_media_type`)",
    416: "the range asked for is outside the content",
    429: "too many requests (`rate_limited`)",
    503: "shutting down, starting or cannot write; retry (`unavailable`)",
    507: "short of disk space: no uploads for now (`storage_full`)",
}
AUTHED = (401, 503)  # any authenticated operation
BODY = (400, 408, 413)  # any operation that reads a JSON body


def error(status: int) -> dict[str, Any]:
    return {"description": STATUS_TEXT[status], "content": {JSON: {"schema": ref("Error")}}}


def json_answer(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


NO_CONTENT = {"description": "done"}


def op(summary: str, answers: dict[int | str, Any], *errors: int, body: dict[str, Any] | None = None,
       query: dict[str, dict[str, Any]] | None = None, public: bool = False, admin: bool = False,
       body_required: bool = True, raw_body: bool = False, headers: dict[str, dict[str, Any]] | None = None,
       signed: bool = False) -> dict[str, Any]:
    """One operation. `answers`: success status -> response; `errors`: the error statuses
    it may answer with, besides those every operation of its kind may."""
    statuses = set(errors) | ({400, 503} if public else set(AUTHED))
    if body is not None:
        statuses |= set(BODY)
    if query:
        statuses.add(400)  # a query parameter out of its range or of the wrong form
    if admin:
        statuses |= {401, 403}
    out: dict[str, Any] = {"summary": summary, "responses": {str(k): v for k, v in answers.items()}}
    for status in sorted(statuses):
        out["responses"].setdefault(str(status), error(status))
    if public:
        out["security"] = []
    elif admin:
        out["security"] = [{"adminToken": []}, {}]
    elif signed:  # a signed URL needs no token
        out["security"] = [{"bearer": []}, {}]
    parameters = []
    for name, schema in (query or {}).items():
        parameters.append({"name": name, "in": "query", "required": False, "schema": schema})
    for name, schema in (headers or {}).items():
        parameters.append({"name": name, "in": "header", "required": False, "schema": schema})
    if parameters:
        out["parameters"] = parameters
    if body is not None:
        media = "application/octet-stream" if raw_body else JSON
        out["requestBody"] = {"required": body_required, "content": {media: {"schema": body}}}
    return out


def limit(default: int, most: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": 1, "maximum": most, "default": default}


POSITIVE = {"type": "integer", "minimum": 1, "maximum": (1 << 63) - 1}
OK_USER = json_answer(obj(["user"], user=ref("User")))
OK_CHAT = json_answer(obj(["chat"], chat=ref("Chat")))
MEDIA_BODY_HEADERS = {"Range": STRING, "If-None-Match": STRING, "If-Range": STRING}
SIGNED = {"exp": STRING, "sig": STRING}


def media_bytes(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}}


MEDIA_DOWNLOAD: dict[int | str, Any] = {
    200: media_bytes("the bytes"), 206: media_bytes("the range asked for"),
    302: {"description": "presigned downloads: the object store's URL in Location"},
    304: {"description": "not modified (If-None-Match)"},
}

#: "METHOD /path/{param}" -> operation. Path parameters are added from the path.
OPERATIONS: dict[str, dict[str, Any]] = {
    # -- the node --
    "GET /healthz": op("Liveness and connection counts", {200: json_answer(obj(["ok"], ok=BOOL, node=STRING))},
                       public=True),
    "GET /metrics": op("Prometheus metrics (admin)", {200: {"description": "text exposition format",
                                                            "content": {"text/plain": {"schema": STRING}}}},
                       admin=True),
    "GET /api/info": op("The node, its limits and its addresses", {200: json_answer(obj(
        ["name", "node_id", "version", "ws_url", "registration_open", "min_password_length", "limits", "nodes"],
        name=STRING, node_id=INT, version=STRING, ws_url=STRING, registration_open=BOOL, min_password_length=INT,
        limits=obj(), nodes=array(STRING)))}, public=True),
    "GET /api/openapi.json": op("This document", {200: json_answer({"type": "object"})}, public=True),
    "GET /": op("The web client", {200: {"description": "its page", "content": {"text/html": {"schema": STRING}}}},
                public=True),
    "GET /sw.js": op("The web client's service worker", {200: {"description": "the script", "content": {
        "text/javascript": {"schema": STRING}}}}, public=True),
    "GET /static/{path}": op("The web client's files", {200: {"description": "a file", "content": {
        "*/*": {"schema": {"type": "string", "format": "binary"}}}}}, 404, public=True),
    # -- accounts --
    "POST /api/register": op("Create an account", {201: OK_USER}, 403, 409, 429, public=True, body=obj(
        ["username", "password"], closed=True, username=STRING, password=STRING, display_name=nullable(STRING))),
    "POST /api/login": op("Log in: a token for a new device", {200: json_answer(obj(
        ["token", "device_id", "user"], token=STRING, device_id=ref("Id"), user=ref("User")))}, 401, 403, 429,
        public=True, body=obj(["username", "password"], closed=True, username=STRING, password=STRING,
                               device=nullable(STRING))),
    "POST /api/logout": op("Log this device out", {204: NO_CONTENT}),
    "GET /api/me": op("You, your device and your settings", {200: json_answer(obj(
        ["user", "device_id", "settings"], user=ref("User"), device_id=ref("Id"), settings=ref("Settings")))}),
    "PATCH /api/me": op("Change your display name", {200: OK_USER}, body=obj(
        ["display_name"], closed=True, display_name=STRING)),
    "POST /api/me/password": op("Change your password", {200: json_answer(obj(["revoked"], revoked=SEQ))}, 403,
                                429, body=obj(["current_password", "new_password"], closed=True, current_password=STRING,
                                              new_password=STRING)),
    "PATCH /api/me/settings": op("Change your settings", {200: json_answer(obj(["settings"], settings=ref(
        "Settings")))}, 404, body=obj(closed=True, read_receipts=BOOL,
                                      last_seen={"enum": ["everyone", "contacts", "nobody"]}), body_required=False),
    "GET /api/me/devices": op("Your logged-in devices", {200: json_answer(obj(["devices"], devices=array(
        ref("Device"))))}),
    "DELETE /api/me/devices/{device_id}": op("Log a device out", {204: NO_CONTENT}, 404),
    "PUT /api/me/photo": op("Set your profile photo", {200: OK_USER}, 403, 404, body=obj(
        ["media"], closed=True, media=ref("Id"))),
    "DELETE /api/me/photo": op("Remove your profile photo", {200: OK_USER}),
    # -- users --
    "GET /api/users": op("Find users by username prefix", {200: json_answer(obj(["users"], users=array(
        ref("User"))))}, 400, query={"prefix": {"type": "string", "maxLength": 32}, "limit": limit(20, 100)}),
    "GET /api/users/{user_id}": op("A user", {200: OK_USER}, 404),
    "GET /api/users/{user_id}/presence": op("A user's presence, if you may see it", {200: json_answer(
        ref("Presence"))}, 404),
    "GET /api/blocks": op("The users you blocked", {200: json_answer(obj(["users"], users=array(ref("User"))))}),
    "PUT /api/blocks/{user_id}": op("Block a user", {204: NO_CONTENT}, 404),
    "DELETE /api/blocks/{user_id}": op("Unblock a user", {204: NO_CONTENT}, 404),
    "POST /api/reports": op("Report a user or a chat to the admins", {201: json_answer(obj(["report"], report=obj(
        ["id", "created", "messages"], id=ref("Id"), created=MS, messages=SEQ)))}, 403, 404, body=obj(
        closed=True, user=ref("Id"), chat=ref("Id"), reason={"type": "string", "maxLength": 1000}, block=BOOL)),
    # -- chats --
    "POST /api/chats/direct": op("The 1-1 chat with a user", {200: OK_CHAT}, 403, 404, body={"anyOf": [
        obj(["user_id"], closed=True, user_id=ref("Id")), obj(["username"], closed=True, username=STRING)]}),
    "GET /api/chats": op("Your chats", {200: json_answer(obj(["chats"], chats=array(ref("Chat"))))}, 400,
                         query={"hidden": {"enum": ["0", "1"]}}),
    "GET /api/chats/{chat_id}": op("A chat", {200: OK_CHAT}, 403, 404),
    "PATCH /api/chats/{chat_id}": op("Rename a group or set its timer", {200: OK_CHAT}, 400, 403, 404, 409, body=obj(
        closed=True, minProperties=1, title=STRING, ttl=SEQ)),
    "GET /api/chats/{chat_id}/messages": op("History", {200: json_answer(obj(
        ["messages", "has_more"], messages=array(ref("Message")), has_more=BOOL, has_newer=BOOL,
        next_before=nullable(SEQ)))}, 400, 403, 404, query={"before": POSITIVE, "around": POSITIVE,
                                                             "limit": limit(50, 200)}),
    "POST /api/chats/{chat_id}/hide": op("Hide a chat", {204: NO_CONTENT}, 403, 404),
    "POST /api/chats/{chat_id}/unhide": op("Unhide a chat", {204: NO_CONTENT}, 403, 404),
    "PATCH /api/chats/{chat_id}/prefs": op("Your preferences for a chat", {200: OK_CHAT}, 403, 404, 409, body=obj(
        closed=True, minProperties=1, mute={"anyOf": [BOOL, {"type": "integer", "minimum": 1,
                                                             "maximum": 10 * 366 * 86_400}]},
        archived=BOOL, pinned=BOOL, marked_unread=BOOL)),
    "POST /api/chats/{chat_id}/clear": op("Clear a chat's history for you", {200: OK_CHAT}, 403, 404),
    "POST /api/chats/{chat_id}/delete": op("Delete a chat for you", {204: NO_CONTENT}, 403, 404),
    "PUT /api/chats/{chat_id}/photo": op("Set a group's photo (admins)", {200: OK_CHAT}, 400, 403, 404, body=obj(
        ["media"], closed=True, media=ref("Id"))),
    "DELETE /api/chats/{chat_id}/photo": op("Remove a group's photo (admins)", {200: OK_CHAT}, 400, 403, 404),
    "POST /api/groups": op("Create a group", {201: OK_CHAT}, 403, 404, 409, body=obj(
        ["title"], closed=True, title=STRING, members=array(ref("Id")), usernames=array(STRING))),
    "GET /api/chats/{chat_id}/members": op("A chat's members", {200: json_answer(obj(["members"], members=array(
        obj(["user", "role", "joined", "delivered_seq", "read_seq"], user=ref("User"), role=STRING, joined=MS,
            delivered_seq=nullable(SEQ), read_seq=nullable(SEQ)))))}, 403, 404),
    "POST /api/chats/{chat_id}/members": op("Add members (admins)", {200: OK_CHAT}, 400, 403, 404, 409, body=obj(
        closed=True, users=array(ref("Id")), usernames=array(STRING))),
    "DELETE /api/chats/{chat_id}/members/{user_id}": op("Remove a member (admins), or leave", {204: NO_CONTENT},
                                                        400, 403, 404),
    "POST /api/chats/{chat_id}/leave": op("Leave a group", {204: NO_CONTENT}, 400, 403, 404),
    "PUT /api/chats/{chat_id}/admins/{user_id}": op("Promote a member (admins)", {204: NO_CONTENT}, 400, 403, 404, 409),
    "DELETE /api/chats/{chat_id}/admins/{user_id}": op("Demote an admin (admins)", {204: NO_CONTENT},
                                                       400, 403, 404, 409),
    "POST /api/chats/{chat_id}/read": op("Mark read up to a seq", {200: json_answer(obj(["read_seq"],
                                                                                        read_seq=SEQ))},
                                         403, 404, body=obj(["seq"], closed=True, seq=SEQ)),
    "GET /api/chats/{chat_id}/messages/{seq}/receipts": op("Who has and who read your message", {200: json_answer(
        obj(["read", "delivered", "pending"], read=array(ref("Id")), delivered=array(ref("Id")),
            pending=array(ref("Id"))))}, 403, 404),
    "PUT /api/chats/{chat_id}/messages/{seq}/reaction": op("React to a message", {200: json_answer(obj(
        ["reaction"], reaction=ref("Reaction")))}, 403, 404, body=obj(["emoji"], closed=True, emoji=STRING)),
    "DELETE /api/chats/{chat_id}/messages/{seq}/reaction": op("Take your reaction back", {200: json_answer(obj(
        ["reaction"], reaction=ref("Reaction")))}, 403, 404),
    "GET /api/chats/{chat_id}/reactions": op("The reactions of a range of messages", {200: json_answer(obj(
        ["reactions"], reactions={"type": "object", "additionalProperties": array(obj(
            ["emoji", "users"], emoji=STRING, users=array(ref("Id"))))}))}, 400, 403, 404,
        query={"from": SEQ, "to": SEQ}),
    "PUT /api/chats/{chat_id}/messages/{seq}/star": op("Star a message", {204: NO_CONTENT}, 403, 404),
    "DELETE /api/chats/{chat_id}/messages/{seq}/star": op("Unstar a message", {204: NO_CONTENT}, 403, 404),
    "GET /api/starred": op("Your starred messages", {200: json_answer(obj(
        ["messages", "next_offset", "has_more"], messages=array(ref("Message")), next_offset=SEQ, has_more=BOOL))},
        400, query={"offset": {"type": "integer", "minimum": 0, "maximum": 1_000_000}, "limit": limit(50, 200)}),
    "POST /api/chats/{chat_id}/messages/delete": op("Delete messages for you", {204: NO_CONTENT}, 403, 404,
                                                    body=obj(["seqs"], closed=True, seqs=array(
                                                        POSITIVE, minItems=1, maxItems=100))),
    "GET /api/search": op("Search messages", {200: json_answer(obj(
        ["results", "next", "complete"], results=array(obj(["chat", "message"], chat=ref("Id"),
                                                           message=ref("Message"))),
        next=nullable(STRING), complete=BOOL))}, 400, 403, 404,
        query={"q": {"type": "string", "maxLength": 200}, "chat": ref("Id"), "limit": limit(20, 100),
               "before": STRING}),
    # -- media (media plugin) --
    "POST /api/media": op("Upload media (raw bytes)", {201: json_answer(obj(["media"], media=ref("Media")))},
                          403, 413, 415, 429, 507, body={"type": "string", "format": "binary"}, raw_body=True,
                          query={"name": {"type": "string", "maxLength": 255}}),
    "GET /api/media/{media_id}": op("Download media (with a token, or a signed URL's exp and sig)",
                                    MEDIA_DOWNLOAD, 403, 404, 416, query=SIGNED, headers=MEDIA_BODY_HEADERS,
                                    signed=True),
    "GET /api/media/{media_id}/thumbnail": op("Download a thumbnail (with a token, or a signed URL's exp and sig)",
                                              MEDIA_DOWNLOAD, 403, 404, 416, query=SIGNED,
                                              headers=MEDIA_BODY_HEADERS, signed=True),
    "GET /api/media/{media_id}/info": op("Media metadata", {200: json_answer(obj(["media"], media=ref("Media")))},
                                        403, 404),
    "GET /api/media/{media_id}/signed": op("Signed URLs", {200: json_answer(obj(
        ["url", "thumbnail_url", "expires"], url=STRING, thumbnail_url=nullable(STRING), expires=MS))}, 403, 404),
    # -- push (push plugin) --
    "GET /api/push/vapid": op("The VAPID public key", {200: json_answer(obj(["public_key"], public_key=STRING))},
                              public=True),
    "POST /api/push/targets": op("Register a push target", {201: json_answer(obj(["target"], target=ref(
        "PushTarget")))}, body={"anyOf": [
            obj(["kind", "endpoint", "keys"], kind={"const": "webpush"}, endpoint=STRING,
                keys=obj(["p256dh", "auth"], p256dh=STRING, auth=STRING)),
            obj(["kind", "endpoint"], kind={"const": "webhook"}, endpoint=STRING)]}),
    "GET /api/push/targets": op("Your push targets", {200: json_answer(obj(["targets"], targets=array(
        ref("PushTarget"))))}),
    "DELETE /api/push/targets/{target_id}": op("Remove a push target", {204: NO_CONTENT}, 404),
    # -- administration --
    "GET /api/admin/stats": op("Counters", {200: json_answer({"type": "object"})}, admin=True),
    "GET /api/admin/node": op("The node, its counters and its cluster", {200: json_answer(obj(
        ["node", "statistics"], node=obj(), statistics=obj(), cluster=obj(), counts=obj()))}, 400, admin=True,
        query={"counts": {"enum": ["0", "1"]}}),
    "GET /api/admin/users": op("List or find accounts", {200: json_answer(obj(["users"], users=array(
        ref("AdminUser")), next=nullable(STRING), more=BOOL))}, 400, admin=True,
        query={"q": {"type": "string", "maxLength": 64}, "prefix": {"type": "string", "maxLength": 32},
               "after": {"type": "string", "maxLength": 32}, "limit": limit(100, 1000)}),
    "POST /api/admin/users": op("Create an account", {201: json_answer(obj(["user"], user=ref("AdminUser")))},
                                409, admin=True, body=obj(["username", "password"], closed=True, username=STRING,
                                                          password=STRING, display_name=nullable(STRING))),
    "GET /api/admin/users/{ref}": op("An account, its devices and how many chats", {200: json_answer(obj(
        ["user", "devices", "chats"], user=ref("AdminUser"), devices=array(ref("Device")), chats=SEQ))}, 404,
        admin=True),
    "DELETE /api/admin/users/{ref}": op("Delete an account", {200: json_answer(obj(
        ["user", "revoked"], user=ref("AdminUser"), revoked=SEQ))}, 404, 409, admin=True),
    "POST /api/admin/users/{ref}/disable": op("Disable an account", {200: json_answer(obj(
        ["user", "revoked"], user=ref("AdminUser"), revoked=SEQ))}, 404, 409, admin=True),
    "POST /api/admin/users/{ref}/enable": op("Enable an account", {200: json_answer(obj(
        ["user", "revoked"], user=ref("AdminUser"), revoked=SEQ))}, 404, 409, admin=True),
    "POST /api/admin/users/{ref}/password": op("Set a new password", {200: json_answer(obj(
        ["user", "revoked"], user=ref("AdminUser"), revoked=SEQ))}, 404, 409, admin=True,
        body=obj(["password"], closed=True, password=STRING)),
    "GET /api/admin/users/{ref}/devices": op("An account's devices", {200: json_answer(obj(
        ["user", "devices"], user=ref("AdminUser"), devices=array(ref("Device"))))}, 404, admin=True),
    "DELETE /api/admin/users/{ref}/devices": op("Log out all of an account's devices", {200: json_answer(obj(
        ["revoked"], revoked=SEQ))}, 404, admin=True),
    "DELETE /api/admin/users/{ref}/devices/{device_id}": op("Log out one device", {200: json_answer(obj(
        ["revoked"], revoked=SEQ))}, 404, admin=True),
    "GET /api/admin/chats/{chat_id}": op("A chat and its members", {200: json_answer(obj(
        ["chat", "members"], chat=obj(), members=array(obj())))}, 404, admin=True, query={"all": {"enum": ["0", "1"]}}),
    "GET /api/admin/cluster/members": op("The cluster's members", {200: json_answer({"type": "object"})}, 404,
                                         admin=True),
    "GET /api/admin/reports": op("Reports, newest first", {200: json_answer(obj(
        ["reports", "users", "has_more"], reports=array(obj()), users={"type": "object"}, has_more=BOOL))}, 400,
        admin=True, query={"before": POSITIVE, "limit": limit(50, 500)}),
    "DELETE /api/admin/reports/{report_id}": op("Dismiss a report", {204: NO_CONTENT}, 404, admin=True),
}


def rule_key(method: str, rule: str) -> str:
    """``GET /api/chats/<chat_id>`` (a route rule) as ``GET /api/chats/{chat_id}``."""
    path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)
    return f"{method} {path}"


def served_operations(app: Any) -> set[str]:
    """Every "METHOD /path" the app serves (HEAD and OPTIONS come with the others)."""
    return {rule_key(method, rule.rule) for rule in app.url_map.iter_rules()
            for method in rule.methods - {"HEAD", "OPTIONS"}}


def document(app: Any, version: str) -> dict[str, Any]:
    """The document for what `app` serves (see the module docstring)."""
    paths: dict[str, dict[str, Any]] = {}
    for key in sorted(served_operations(app)):
        method, path = key.split(" ", 1)
        operation = OPERATIONS.get(key) or op("A plugin's route (see its documentation)",
                                              {200: {"description": "OK"}}, 400, 403, 404)
        params = [{"name": name, "in": "path", "required": True, "schema": STRING}
                  for name in re.findall(r"\{([^}]+)\}", path)]
        if params:
            operation = {**operation, "parameters": params + operation.get("parameters", [])}
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "chatnode HTTP API", "version": version,
                 "description": "The chat socket is described in docs/protocol.md; every error body is "
                                "`{\"error\": {\"code\", \"message\"}}` with a code of its \"Error codes\"."},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "a device token from POST /api/login"},
                "adminToken": {"type": "http", "scheme": "bearer",
                               "description": "[admin] token; with none set, loopback clients need none"},
            },
        },
        "security": [{"bearer": []}],
    }
