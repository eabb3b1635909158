"""Full-text search for the LMDB engine: an SQLite FTS5 index beside the environment.

LMDB has no text index, so the engine keeps one in SQLite (Python's own sqlite3, whose
FTS5 tokenizer ``unicode61`` folds case and, with ``remove_diacritics 2``, accents). It is
a cache of the log, never the truth:

- **In step.** Every write of a log entry (append, rewrite by an edit or a deletion, purge)
  also marks its (chat, seq) dirty in LMDB's ``search_dirty`` database, in the same
  transaction, with a fresh token. After each commit the indexer takes a chunk of dirty
  marks, reads those entries as they are now, updates SQLite in one transaction (an entry
  without text, a tombstone or a purged one leaves the index), and then clears the marks
  whose token is unchanged (a mark set again meanwhile is indexed again). A crash between
  the two only indexes some entries twice.
- **Rebuilt.** If the index file is missing, was left half-built, or belongs to another
  environment (its id differs from the one in LMDB's ``meta``), it is built again from the
  whole log, a chunk at a time, while the node serves; marks made meanwhile are applied
  afterwards.
- **Off the event loop.** Every SQLite call runs in a worker thread; one connection writes
  (the indexer), another reads (searches), which WAL lets run side by side.

Results are checked against the log by the engine (an entry that no longer carries the
text is dropped), so a stale index can never show what is gone.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # One row per indexed entry; its rowid is the FTS row's.
    "CREATE TABLE IF NOT EXISTS docs (id INTEGER PRIMARY KEY, chat INTEGER NOT NULL, seq INTEGER NOT NULL,"
    " ts INTEGER NOT NULL, expires INTEGER NOT NULL DEFAULT 0, UNIQUE (chat, seq))",
    "CREATE INDEX IF NOT EXISTS docs_ts ON docs (ts)",
    "CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(text, tokenize = 'unicode61 remove_diacritics 2')",
)


def _private(path: Path) -> None:
    """The index holds the text of every message: the node's user alone may read it, as
    the database beside it. SQLite gives its -wal and -shm files the main file's mode, so
    the main file is made 0600 before SQLite creates it (an older one is changed)."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)


class FtsIndex:
    """The SQLite side: open, (re)build, apply changes, search. Every method blocks: call
    it in a worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        _private(self.path)
        conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def open(self, env_id: str) -> bool:
        """Open (creating the file if needed); True if the index is complete and belongs to
        the environment `env_id`, else it was emptied and must be built."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._writer = self._connect()
            for statement in SCHEMA:
                self._writer.execute(statement)
        except sqlite3.DatabaseError:  # not an SQLite file, or a damaged one: start again
            self.close()
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            self._writer = self._connect()
            for statement in SCHEMA:
                self._writer.execute(statement)
        self._reader = self._connect()
        meta = dict(self._writer.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("env") == env_id and meta.get("built") == "1":
            return True
        with self._write_lock:
            self._writer.execute("BEGIN")
            self._writer.execute("DELETE FROM docs")
            self._writer.execute("DELETE FROM fts")
            self._writer.execute("DELETE FROM meta")
            self._writer.execute("INSERT INTO meta VALUES ('env', ?), ('built', '0')", (env_id,))
            self._writer.execute("COMMIT")
        return False

    def _open_writer(self) -> sqlite3.Connection:
        if self._writer is None:
            raise sqlite3.ProgrammingError("the search index is not open")
        return self._writer

    def _open_reader(self) -> sqlite3.Connection:
        if self._reader is None:
            raise sqlite3.ProgrammingError("the search index is not open")
        return self._reader

    def mark_built(self) -> None:
        with self._write_lock:
            self._open_writer().execute("UPDATE meta SET value = '1' WHERE key = 'built'")

    def close(self) -> None:
        for conn in (self._writer, self._reader):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        self._writer = self._reader = None

    def apply(self, changes: Iterable[tuple[int, int, int, int, str | None]]) -> None:
        """(chat, seq, ts, expires_at, text or None) per entry, as it is now, in one transaction."""
        conn = self._open_writer()
        with self._write_lock:
            conn.execute("BEGIN")
            try:
                for chat, seq, ts, expires, text in changes:
                    row = conn.execute("SELECT id FROM docs WHERE chat = ? AND seq = ?", (chat, seq)).fetchone()
                    if row is not None:
                        conn.execute("DELETE FROM fts WHERE rowid = ?", row)
                        conn.execute("DELETE FROM docs WHERE id = ?", row)
                    if text:
                        cur = conn.execute("INSERT INTO docs (chat, seq, ts, expires) VALUES (?, ?, ?, ?)",
                                           (chat, seq, ts, expires or 0))
                        conn.execute("INSERT INTO fts (rowid, text) VALUES (?, ?)", (cur.lastrowid, text))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def search(self, terms: list[str], ranges: list[tuple[int, int, int]], now: int, limit: int,
               before: tuple[int, int, int] | None) -> list[tuple[int, int]]:
        """(chat, seq) of entries whose text holds every term (as a word or the start of
        one), within the (chat, first, last) ranges, not expired at `now`, the newest first,
        strictly before the (ts, chat, seq) `before`."""
        match = " AND ".join(f'"{term}"*' for term in terms)
        conn = self._open_reader()
        with self._read_lock:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS wanted"
                         " (chat INTEGER PRIMARY KEY, first INTEGER, last INTEGER)")
            conn.execute("BEGIN")
            try:
                conn.execute("DELETE FROM temp.wanted")
                conn.executemany("INSERT OR REPLACE INTO temp.wanted VALUES (?, ?, ?)", ranges)
                ts, chat, seq = before if before is not None else (1 << 62, 1 << 62, 1 << 62)
                rows = conn.execute(
                    "SELECT d.chat, d.seq FROM fts JOIN docs d ON d.id = fts.rowid"
                    " JOIN temp.wanted w ON w.chat = d.chat AND d.seq BETWEEN w.first AND w.last"
                    " WHERE fts MATCH ? AND (d.expires = 0 OR d.expires > ?) AND (d.ts, d.chat, d.seq) < (?, ?, ?)"
                    " ORDER BY d.ts DESC, d.chat DESC, d.seq DESC LIMIT ?",
                    (match, now, ts, chat, seq, limit)).fetchall()
            finally:
                conn.execute("COMMIT")
        return [(chat, seq) for chat, seq in rows]

    def count(self) -> int:
        with self._read_lock:
            return self._open_reader().execute("SELECT count(*) FROM docs").fetchone()[0]
