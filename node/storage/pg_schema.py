"""The PostgreSQL engine's tables and their versioned migrations.

Core data lives in plain tables an operator can read with psql; plugin data in one
namespaced key-value table. The constraints are the fences a cluster relies on when two
nodes both believe they own a chat: PostgreSQL itself refuses a second writer of a seq
(messages' primary key), of a client_msg_id (dedupe's primary key), of a message id, a
username or a 1-1 chat, and `chats.last_seq` is moved only by compare-and-set.

Text columns that are keys use the "C" collation: byte order, as in LMDB, so both
engines list usernames, metadata keys and plugin namespaces in the same order, and a
prefix search (LIKE 'abc%') can use the index.

Migrations run at open, in one transaction, under an advisory lock (several nodes may
start at once); `schema_version` keeps one row per applied version.
"""

from __future__ import annotations

from typing import Any

from .api import StorageError

SCHEMA_VERSION = 2

#: pg_advisory_xact_lock key held while the schema is checked and migrated.
MIGRATION_LOCK = 0x63686174_6E6F6465 & 0x7FFFFFFFFFFFFFFF  # "chatnode"

_V1 = [
    """CREATE TABLE users (
        id bigint PRIMARY KEY,
        username text COLLATE "C" UNIQUE,  -- owned by add_username / remove_username
        created bigint,  -- Unix ms, from the record
        record jsonb  -- NULL while only the username is stored
    )""",
    """CREATE TABLE tokens (
        hash bytea PRIMARY KEY,  -- sha256 of the device token
        user_id bigint NOT NULL,
        record jsonb NOT NULL
    )""",
    "CREATE INDEX tokens_user_id ON tokens (user_id)",
    """CREATE TABLE chats (
        id bigint PRIMARY KEY,
        kind text,
        record jsonb,  -- NULL while only the seq is stored
        last_seq bigint NOT NULL DEFAULT 0  -- moved only by compare-and-set (set_chat_seq)
    )""",
    """CREATE TABLE members (
        chat_id bigint NOT NULL,
        user_id bigint NOT NULL,
        record jsonb NOT NULL,
        PRIMARY KEY (chat_id, user_id)
    )""",
    "CREATE INDEX members_user_id ON members (user_id)",
    """CREATE TABLE direct_chats (
        low bigint NOT NULL,  -- the lower user id
        high bigint NOT NULL,
        chat_id bigint NOT NULL,
        PRIMARY KEY (low, high)
    )""",
    """CREATE TABLE messages (
        chat_id bigint NOT NULL,
        seq bigint NOT NULL,
        id bigint NOT NULL UNIQUE,
        sender bigint NOT NULL,  -- 0: the node itself
        kind text NOT NULL,
        ts bigint NOT NULL,  -- Unix ms
        expires_at bigint,  -- Unix ms; NULL: never
        record json NOT NULL,  -- json keeps the exact bytes clients receive
        PRIMARY KEY (chat_id, seq)
    )""",
    "CREATE INDEX messages_expiry ON messages (expires_at, chat_id, seq) WHERE expires_at IS NOT NULL",
    """CREATE TABLE dedupe (
        user_id bigint NOT NULL,
        client_msg_id text COLLATE "C" NOT NULL,
        chat_id bigint NOT NULL,
        seq bigint NOT NULL,
        message_id bigint NOT NULL,
        ts bigint NOT NULL,  -- Unix ms of the send; purged after storage.dedupe_retention
        PRIMARY KEY (user_id, client_msg_id)
    )""",
    "CREATE INDEX dedupe_ts ON dedupe (ts, user_id, client_msg_id)",
    """CREATE TABLE blocks (
        blocker bigint NOT NULL,
        blocked bigint NOT NULL,
        PRIMARY KEY (blocker, blocked)
    )""",
    """CREATE TABLE meta (
        key text COLLATE "C" PRIMARY KEY,
        value bytea NOT NULL
    )""",
    """CREATE TABLE plugin_kv (
        namespace text COLLATE "C" NOT NULL,  -- "<plugin>/<store>"
        key bytea NOT NULL,
        value bytea NOT NULL,
        PRIMARY KEY (namespace, key)
    )""",
    "COMMENT ON TABLE messages IS 'chatnode: each chat''s log, one row per seq (record: what clients receive)'",
    "COMMENT ON TABLE dedupe IS 'chatnode: the ack of each send with a client_msg_id, for idempotent retries'",
    "COMMENT ON TABLE plugin_kv IS 'chatnode: plugin data, one namespace per plugin store'",
]

#: Version 2: message search. Each entry's text (a message, or a caption) as a tsvector of
#: the 'simple' configuration (lower-cased words, no stemming: right for every language),
#: written by the engine with the entry itself (append, rewrite), so it changes with every
#: edit, deletion and purge in the same transaction; a GIN index answers the matches. Rows
#: already stored get theirs here (a text holding U+0000, which PostgreSQL text cannot,
#: without it).
_V2 = [
    "ALTER TABLE messages ADD COLUMN search tsvector",
    "UPDATE messages SET search = to_tsvector('simple', replace(record::text, '\\u0000', '')::json ->> 'text')"
    " WHERE kind IN ('text', 'image', 'audio', 'video', 'file')",
    "CREATE INDEX messages_search ON messages USING gin (search)",
]

#: version -> the statements that bring the previous version to it.
MIGRATIONS: dict[int, list[str]] = {1: _V1, 2: _V2}


def migrate(conn: Any, where: str) -> int:
    """Create or upgrade the schema in one transaction under an advisory lock; refuse a
    database newer than this code. `conn` is a psycopg connection (autocommit off)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        version = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"the database {where} has schema version {version}, newer than this chatnode "
                f"understands ({SCHEMA_VERSION}); upgrade chatnode"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[target]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (target,))
    return SCHEMA_VERSION
