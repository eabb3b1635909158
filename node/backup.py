"""``chatnode backup DEST`` and ``chatnode restore SRC`` (docs/operations.md, "Backup and restore").

A backup is a folder:

    manifest.json        what the backup holds: engine, schema version, rows per table,
                         and the size and SHA-256 of every file below (written last: a
                         folder without it is an unfinished backup)
    db/data.mdb          LMDB: a compacted copy of the environment, as of one snapshot
    db.dump              PostgreSQL: pg_dump (custom format) of the node's database, same
    media/content/..     the uploads the copied database refers to (content-addressed)
    media/thumbs/..      their thumbnails

The node's keys (media URL signing, VAPID) are records in the database, so the database
copy holds them.

Taken while the node serves: the database copy is one snapshot (node/storage/snapshot.py),
and the media files it refers to are immutable and named by their SHA-256, so copying
them afterwards gives exactly the bytes the snapshot means (a file collected between the
snapshot and its copy is reported, not silently left out). Every file is read back and
checked against the manifest before the backup is called done.

`restore` checks a backup before anything is put in place (every file's size and
SHA-256; the database copy's schema version and rows per table), refuses to touch the
data of a running node, never overwrites data without ``--force`` (and then moves what
was there aside), and checks the restored database against the manifest again.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import IO, Any

import trio

from .config import Config

MANIFEST = "manifest.json"
FORMAT = 1
MEDIA_REFS = "media/refs"  # the media plugin's content references: SHA-256 (32 bytes) + item id
CHUNK = 1 << 20


class BackupError(Exception):
    """A backup or restore refused or failed: one line for stderr."""


# -- progress ------------------------------------------------------------------------------------


class Progress:
    """One line per phase on stderr: a bar redrawn in place on a terminal, the final
    figures only elsewhere (logs, scripts)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.label = ""
        self.total = 0
        self.done = 0
        self.count = 0
        self._drawn = 0.0

    def start(self, label: str, total: int) -> None:
        self.label, self.total, self.done, self.count = label, total, 0, 0
        self._draw(force=True)

    def advance(self, amount: int, items: int = 1) -> None:
        self.done += amount
        self.count += items
        self._draw()

    def finish(self, note: str = "") -> None:
        self.done = max(self.done, self.total)
        line = self._line() + (f"  {note}" if note else "")
        self.stream.write(("\r" + line + "\n") if self.tty else line + "\n")
        self.stream.flush()

    def _line(self) -> str:
        if self.total:
            share = min(1.0, self.done / self.total)
            bar = "#" * int(share * 30)
            return f"{self.label:<10} [{bar:<30}] {share:4.0%}  {_size(self.done)} of {_size(self.total)}"
        return f"{self.label:<10} {_size(self.done)}"

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty and (force or now - self._drawn > 0.1):
            self._drawn = now
            self.stream.write("\r" + self._line())
            self.stream.flush()


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# -- files -----------------------------------------------------------------------------------------


def _sha256_file(path: Path, progress: Progress | None = None) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if progress is not None:
                progress.advance(len(chunk), 0)
    return size, digest.hexdigest()


def _copy_file(source: Path, target: Path, progress: Progress) -> tuple[int, str]:
    """Copy with a running SHA-256, fsynced, mode 0600; (size, sha256)."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    part = target.with_name(target.name + ".part")
    with source.open("rb") as src, os.fdopen(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
            progress.advance(len(chunk), 0)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(part, target)
    return size, digest.hexdigest()


def _fsync_tree(root: Path) -> None:
    for folder, _dirs, _files in os.walk(root):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def media_dir(config: Config) -> Path | None:
    """The media plugin's local content store, or None (the plugin is off, or keeps its
    content in an object store, which has durability of its own)."""
    if "media" in config.plugins.disabled:
        return None
    settings = config.plugins.settings.get("media", {})
    if settings.get("store", "local") != "local":
        return None
    return config.data_dir / settings.get("dir", "media")


def _media_files(root: Path, shas: list[str]) -> tuple[list[tuple[Path, str]], list[str]]:
    """(source path, backup path) of the content files and thumbnails of `shas`, and the
    SHA-256s whose file is gone."""
    from .plugins.media.store import CONTENT, THUMBNAIL, LocalStore

    store = LocalStore(root)
    found, missing = [], []
    for sha in shas:
        content = store.path(sha, CONTENT)
        if not content.is_file():
            missing.append(sha)
            continue
        found.append((content, f"media/{content.relative_to(root)}"))
        thumb = store.path(sha, THUMBNAIL)
        if thumb.is_file():
            found.append((thumb, f"media/{thumb.relative_to(root)}"))
    return found, missing


# -- backup ------------------------------------------------------------------------------------------


async def backup(config: Config, dest: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Take a backup of the node on `config` into `dest` (see the module docstring);
    returns the manifest."""
    from .app import VERSION
    from .storage import StorageError
    from .storage import snapshot as snap

    progress = progress or Progress()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} exists and is not empty: give a new folder")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(dest, 0o700)  # password hashes and device token hashes are in the copy
    started = time.time()
    files: dict[str, dict[str, Any]] = {}
    media_root = media_dir(config)
    namespaces = [MEDIA_REFS] if media_root is not None else []
    try:
        def on_start(size: int) -> None:
            trio.from_thread.run_sync(progress.start, "database", size)

        if config.storage.engine == "lmdb":
            db_path = "db/data.mdb"
            shot = await _watching(dest / db_path, progress, trio.to_thread.run_sync(
                lambda: snap.lmdb_copy(config.data_dir / "db", dest / "db", namespaces, on_start)))
        else:
            db_path = "db.dump"
            shot = await _watching(dest / db_path, progress, trio.to_thread.run_sync(
                lambda: snap.postgres_dump(config.storage.dsn, dest / db_path, namespaces, on_start)))
    except StorageError as exc:
        raise BackupError(str(exc)) from None
    written = (dest / db_path).stat().st_size
    progress.done = progress.total = written
    progress.finish(f"{shot.engine}, schema {shot.schema_version}, "
                    f"{shot.counts.get('messages', shot.counts.get('log', 0)):,} log entries")

    shas = sorted({key[:32].hex() for key in shot.keys.get(MEDIA_REFS, [])})
    sources, missing = _media_files(media_root, shas) if media_root is not None else ([], [])
    total = sum(path.stat().st_size for path, _ in sources)
    progress.start("media", total)
    for source, name in sources:
        try:
            size, sha = await trio.to_thread.run_sync(_copy_file, source, dest / name, progress)
        except FileNotFoundError:  # collected since the snapshot
            missing.append(Path(name).name)
            continue
        progress.count += 1
        files[name] = {"size": size, "sha256": sha}
    progress.finish(f"{len(shas) - len(missing)} of {len(shas)} uploads" + (f", {len(missing)} gone" if missing else ""))

    manifest = {
        "format": FORMAT,
        "chatnode": VERSION,
        "created": int(started * 1000),
        "seconds": round(time.time() - started, 3),
        "node": {"id": config.node.id, "name": config.node.name},
        "engine": shot.engine,
        "schema_version": shot.schema_version,
        "database": db_path,
        "counts": shot.counts,
        "media": {"store": "local" if media_root is not None else "none or external",
                  "uploads": len(shas), "missing": sorted(missing)},
        "files": {},
    }
    # Last: the database copy's checksum, and every file read back from the backup.
    manifest["files"] = {db_path: dict(zip(("size", "sha256"), await trio.to_thread.run_sync(
        _sha256_file, dest / db_path))), **files}
    await verify(dest, manifest, progress, label="verify")
    await trio.to_thread.run_sync(_write_manifest, dest, manifest)
    return manifest


async def _watching(path: Path, progress: Progress, work: Any) -> Any:
    """Await `work` (a copy in a thread) while showing how big `path` has grown; its
    exception is raised as it is (not in a group)."""
    outcome: list[Any] = []

    async def run() -> None:
        try:
            outcome.append((True, await work))
        except Exception as exc:
            outcome.append((False, exc))
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        while True:
            await trio.sleep(0.2)
            try:
                progress.done = path.stat().st_size
            except OSError:
                continue
            progress._draw()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def _write_manifest(dest: Path, manifest: dict[str, Any]) -> None:
    part = dest / (MANIFEST + ".part")
    with os.fdopen(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, dest / MANIFEST)
    _fsync_tree(dest)


# -- checks --------------------------------------------------------------------------------------------


def read_manifest(source: Path) -> dict[str, Any]:
    path = source / MANIFEST
    if not path.is_file():
        raise BackupError(f"{source} has no {MANIFEST}: not a chatnode backup, or one that did not finish")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path} cannot be read: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{path}: backup format {manifest.get('format')!r}; this chatnode reads {FORMAT}")
    return manifest


async def verify(source: Path, manifest: dict[str, Any], progress: Progress, *, label: str = "check") -> None:
    """Every file of the manifest, read back: size and SHA-256 (an upload's, its name too);
    the database copy's schema version and rows per table. Raises BackupError."""
    from .storage import StorageError
    from .storage import snapshot as snap

    entries = manifest["files"]
    progress.start(label, sum(e["size"] for e in entries.values()))
    for name, expected in sorted(entries.items()):
        path = source / name
        if not path.is_file():
            raise BackupError(f"{path} is missing from the backup")
        size, sha = await trio.to_thread.run_sync(_sha256_file, path, progress)
        if (size, sha) != (expected["size"], expected["sha256"]):
            raise BackupError(f"{path} is damaged: its SHA-256 or size differs from the manifest's")
        if name.startswith("media/content/") and path.name != sha:
            raise BackupError(f"{path} does not hold the upload it is named after")
    if manifest["engine"] == "lmdb":
        try:
            shot = await trio.to_thread.run_sync(snap.lmdb_examine, source / "db")
        except StorageError as exc:
            raise BackupError(str(exc)) from None
        _compare(manifest, shot)
    else:
        try:
            tables = await trio.to_thread.run_sync(snap.postgres_dump_tables, source / manifest["database"])
        except StorageError as exc:
            raise BackupError(str(exc)) from None
        absent = {t for t, n in manifest["counts"].items() if n} - tables
        if absent:
            raise BackupError(f"the dump lacks the data of {', '.join(sorted(absent))}")
    progress.finish(f"{len(entries)} files, schema {manifest['schema_version']}, counts match")


def _compare(manifest: dict[str, Any], shot: Any) -> None:
    if shot.schema_version != manifest["schema_version"]:
        raise BackupError(f"the database says schema version {shot.schema_version}, the manifest "
                          f"{manifest['schema_version']}")
    if shot.counts != manifest["counts"]:
        differ = sorted(t for t in set(shot.counts) | set(manifest["counts"])
                        if shot.counts.get(t) != manifest["counts"].get(t))
        raise BackupError(f"rows differ from the manifest's in {', '.join(differ)}")


# -- restore ---------------------------------------------------------------------------------------------


async def restore(config: Config, source: Path, *, force: bool = False, progress: Progress | None = None
                  ) -> dict[str, Any]:
    """Check the backup in `source`, then put it in place for the node on `config` (see
    the module docstring); returns the manifest."""
    from .storage import StorageError
    from .storage import snapshot as snap
    from .storage.liveness import InUse, lock_data_dir, node_sessions

    progress = progress or Progress()
    manifest = read_manifest(source)
    engine = config.storage.engine
    if manifest["engine"] != engine:
        raise BackupError(f"this is a backup of a {manifest['engine']} node, and the config's storage.engine is "
                          f"{engine}: restore it to {manifest['engine']}, then use chatnode storage copy")
    newest = snap.lmdb_schema_version() if engine == "lmdb" else snap.postgres_schema_version()
    if manifest["schema_version"] > newest:
        raise BackupError(f"the backup has schema version {manifest['schema_version']}, newer than this chatnode "
                          f"understands ({newest}): restore it with chatnode {manifest['chatnode']} or later")
    await verify(source, manifest, progress)
    data_dir = config.data_dir
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        with lock_data_dir(data_dir):  # no node starts here meanwhile (and none runs now)
            if engine == "lmdb":
                await _restore_lmdb(config, source, manifest, force, progress)
            else:
                sessions = await trio.to_thread.run_sync(node_sessions, config.storage.dsn)
                if sessions:
                    raise BackupError(f"nodes are connected to the database ({', '.join(sessions[:5])}): stop them, "
                                      "or restore into a new database")
                if not await trio.to_thread.run_sync(snap.postgres_target_empty, config.storage.dsn):
                    raise BackupError("the database in storage.dsn is not empty: create a new database "
                                      "(createdb) and point storage.dsn at it")
                progress.start("database", manifest["files"][manifest["database"]]["size"])
                shot = await trio.to_thread.run_sync(snap.postgres_restore, source / manifest["database"],
                                                     config.storage.dsn)
                _compare(manifest, shot)
                progress.finish(f"schema {shot.schema_version}, counts match")
            await _restore_files(config, source, manifest, force, progress)
    except InUse as exc:
        raise BackupError(f"{exc}: stop the node before restoring its data") from None
    except StorageError as exc:
        raise BackupError(str(exc)) from None
    return manifest


async def _restore_lmdb(config: Config, source: Path, manifest: dict[str, Any], force: bool,
                        progress: Progress) -> None:
    from .storage import snapshot as snap

    data_dir = config.data_dir
    target = data_dir / "db"
    if (target / "data.mdb").exists():
        if not force:
            raise BackupError(f"{target} holds a database: add --force to move it aside and restore over it")
        aside = data_dir / f"db.before-restore-{time.strftime('%Y%m%d-%H%M%S')}"
        target.rename(aside)
        print(f"moved the database that was there to {aside}", file=progress.stream)
    incoming = data_dir / "db.restoring"
    if incoming.exists():
        shutil.rmtree(incoming)  # a restore cut short before
    incoming.mkdir(mode=0o700)
    name = manifest["database"]
    progress.start("database", manifest["files"][name]["size"])
    size, sha = await trio.to_thread.run_sync(_copy_file, source / name, incoming / "data.mdb", progress)
    if (size, sha) != (manifest["files"][name]["size"], manifest["files"][name]["sha256"]):
        raise BackupError("the database copy changed while it was restored; nothing was put in place")
    _compare(manifest, await trio.to_thread.run_sync(snap.lmdb_examine, incoming))
    if target.exists():
        shutil.rmtree(target)  # what a node left without a database (a lock file)
    incoming.rename(target)
    await trio.to_thread.run_sync(_fsync_tree, data_dir)
    for stale in data_dir.glob("search.sqlite*"):  # the index of the database that was here
        stale.unlink()
    progress.finish(f"schema {manifest['schema_version']}, counts match")


async def _restore_files(config: Config, source: Path, manifest: dict[str, Any], force: bool,
                         progress: Progress) -> None:
    """Uploads, thumbnails and keys: an upload already there is the same bytes (it is
    named by them); a key that differs is replaced only with --force (the old one kept)."""
    media = media_dir(config)
    todo = []
    for name, entry in sorted(manifest["files"].items()):
        if name == manifest["database"]:
            continue
        if name.startswith("media/"):
            if media is None:
                continue
            target = media / name.removeprefix("media/")
        else:
            target = config.data_dir / name
        if target.exists():
            same = (await trio.to_thread.run_sync(_sha256_file, target))[1] == entry["sha256"]
            if same:
                continue
            if not name.endswith((".key", ".pem")) or not force:
                raise BackupError(f"{target} exists and differs from the backup's: add --force to replace it "
                                  "(the old file is kept beside it)")
            target.rename(target.with_name(f"{target.name}.before-restore-{time.strftime('%Y%m%d-%H%M%S')}"))
        todo.append((source / name, target))
    progress.start("media", sum((s.stat().st_size for s, _ in todo), 0))
    for src, target in todo:
        await trio.to_thread.run_sync(_copy_file, src, target, progress)
    if todo:
        await trio.to_thread.run_sync(_fsync_tree, config.data_dir)
    progress.finish(f"{len(todo)} files put in place")


# -- commands -----------------------------------------------------------------------------------------------


def add_backup_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("backup", help="copy the node's database and media while it serves")
    p.add_argument("dest", type=Path, help="a new (or empty) folder for the backup")
    p.add_argument("--config", "-c", default="config.toml")
    p = commands.add_parser("restore", help="check a backup, then put it in place for a stopped node")
    p.add_argument("source", type=Path, help="a folder made by chatnode backup")
    p.add_argument("--config", "-c", default="config.toml")
    p.add_argument("--force", action="store_true", help="move the data that is there aside and restore over it")


def run_backup_command(args: argparse.Namespace, config: Config) -> int:
    try:
        if args.command == "backup":
            manifest = trio.run(backup, config, args.dest)
            print(f"backup of node {manifest['node']['id']} ({manifest['engine']}, schema "
                  f"{manifest['schema_version']}) in {args.dest}: {len(manifest['files'])} files, "
                  f"{manifest['seconds']:.1f} s")
        else:
            manifest = trio.run(functools.partial(restore, config, args.source, force=args.force))
            print(f"restored the backup of {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(manifest['created'] / 1000))}"
                  f" UTC into {config.data_dir if config.storage.engine == 'lmdb' else 'the database'}: "
                  "start the node")
    except BackupError as exc:
        print(f"chatnode: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0

