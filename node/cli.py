"""The `chatnode` command: serve a node, check a config, copy a stopped node's data."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import trio

from . import logs, preflight
from .app import VERSION, Node, _first_leaf, serve_node
from .config import Config, ConfigError, load_config
from .logs import LEVELS
from .plugin_manager import Plugins
from .storage import StorageError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatnode", description="A self-hostable chat server.")
    parser.add_argument("--version", action="version", version=f"chatnode {VERSION}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run a node")
    serve.add_argument("--config", "-c", default=None, help="path to config.toml (default: built-in defaults)")
    serve.add_argument("--log-level", default=None, choices=LEVELS, help="overrides [log] level")
    check = commands.add_parser("check-config", help="validate a config file (plugin sections too) and exit")
    check.add_argument("--config", "-c", default="config.toml")
    plugins = commands.add_parser("plugins", help="list the plugins a node on this config would load")
    plugins.add_argument("--config", "-c", default="config.toml")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    media = commands.add_parser("media", help="media store tools")
    media_commands = media.add_subparsers(dest="media_command", required=True)
    copy = media_commands.add_parser(
        "copy", help="copy the node's local media into the object store of [plugins.media.s3] (resumable)")
    copy.add_argument("--config", "-c", default="config.toml")
    copy.add_argument("--from", dest="source", default=None,
                      help="the local media folder (default: [plugins.media] dir under the data dir)")
    copy.add_argument("--quick", action="store_true", help="verify copies by size only, without reading them back")
    _add_storage_commands(commands)
    # -- cluster (node/cluster owns what is inside this block) ------------------------
    from .cluster.cli import add_cluster_commands

    add_cluster_commands(commands)
    # -- end cluster --
    # -- admin, backup and restore (node/admin_cli.py, node/backup.py) ----------------------
    from .admin_cli import add_admin_commands
    from .backup import add_backup_commands

    add_admin_commands(commands)
    add_backup_commands(commands)
    # -- end admin --
    return parser


def _add_storage_commands(commands: argparse._SubParsersAction) -> None:
    storage = commands.add_parser("storage", help="copy a stopped node's data to another engine, or verify a copy")
    actions = storage.add_subparsers(dest="storage_command", required=True)
    where = ("postgresql://USER@HOST/DBNAME (or postgresql:'host=... dbname=...'), "
             "or lmdb:DATA_DIR (a node data dir; the database is DATA_DIR/db)")
    copy = actions.add_parser(
        "copy", help="copy the config's storage to a target, then verify it",
        description="Copy a stopped node's data from the engine in --config to TARGET, then verify counts and "
                    "checksums of every table. The target must be empty or an unfinished copy of the same source "
                    "(run the same command again to continue). Exit code 0: verified; 1: the target differs; "
                    "2: refused or failed.")
    copy.add_argument("--config", "-c", default="config.toml", help="the node's config (its [storage] is the source)")
    copy.add_argument("--to", required=True, metavar="TARGET", help=where)
    copy.add_argument("--page", type=int, default=1000, help="rows per transaction (default 1000)")
    copy.add_argument("--kill-after-pages", type=int, default=None, help=argparse.SUPPRESS)  # tests: a hard stop
    verify = actions.add_parser(
        "verify", help="compare the config's storage with another, table by table",
        description="Compare counts and checksums of every table of the config's storage and TARGET, writing "
                    "nothing. Exit code 0: the same; 1: they differ; 2: refused or failed.")
    verify.add_argument("--config", "-c", default="config.toml")
    verify.add_argument("--against", required=True, metavar="TARGET", help=where)
    verify.add_argument("--page", type=int, default=1000, help=argparse.SUPPRESS)


@contextlib.contextmanager
def _hold_data_dir(path: Path, *, create: bool) -> Iterator[None]:
    """Take the lock a running node holds on its data dir (node.lock): refused
    while a node (or another copy) runs on it, and no node starts on it until we are done."""
    from .storage.copy import CopyRefused
    from .storage.liveness import open_lock_file

    if not path.is_dir():
        if not create:
            yield
            return
        path.mkdir(mode=0o700, parents=True)
    with open_lock_file(path) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise CopyRefused(f"{path} is in use by a running node or copy (pid {holder}): stop it first") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def _storage_command(args: argparse.Namespace, config: Config) -> int:
    """`chatnode storage copy|verify`: the source is the config's storage; every data dir
    involved is locked as a node locks its own, so none of them is (or becomes) live."""
    from .storage.copy import CopyRefused, Location, Settings, check_places, run_copy, run_verify

    name = f"storage {args.storage_command}"
    section = config.storage
    source = Location("postgresql", section.dsn) if section.engine == "postgresql" else Location(
        "lmdb", str(config.data_dir))
    settings = Settings(map_size=section.map_size_mb << 20, max_map_size=section.max_map_size_mb << 20,
                        max_batch=section.max_batch, commit_timeout=section.commit_timeout)
    logs.configure("WARNING", config.log.format)
    try:
        if args.page < 1:
            raise CopyRefused("--page must be at least 1")
        if section.engine == "postgresql" and not section.dsn:
            raise CopyRefused(f"{args.config}: storage.dsn is required with engine = \"postgresql\"")
        target = Location.parse(args.to if args.storage_command == "copy" else args.against)
        check_places(source, target)
        with contextlib.ExitStack() as held:
            held.enter_context(_hold_data_dir(config.data_dir, create=False))
            if target.engine == "lmdb":
                held.enter_context(_hold_data_dir(Path(target.where), create=args.storage_command == "copy"))
            if args.storage_command == "copy":
                return trio.run(lambda: run_copy(source, target, settings, page=args.page,
                                                 kill_after_pages=args.kill_after_pages))
            return trio.run(lambda: run_verify(source, target, settings, page=args.page))
    except (CopyRefused, StorageError) as exc:
        print(f"chatnode: {name}: {exc}", file=sys.stderr)
        return 2
    except ExceptionGroup as group:
        problem = _first_leaf(group, (CopyRefused, StorageError))
        if problem is None:
            raise
        print(f"chatnode: {name}: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"chatnode: {name}: interrupted; run the same command again to continue", file=sys.stderr)
        return 130


async def _serve(config: Config) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def run_node(task_status: trio.TaskStatus[Node]) -> None:
                await serve_node(config, task_status=task_status)
                nursery.cancel_scope.cancel()  # drained and closed: stop watching signals

            node = await nursery.start(run_node)
            print(f"{_who(config)} is running: open {node.http_url}/ (chat socket {node.ws_url})", flush=True)
            async for _ in signals:
                if node.shutdown_requested.is_set():
                    nursery.cancel_scope.cancel()  # a second signal: stop without draining
                    return
                node.request_shutdown()


def _who(config: Config) -> str:
    """ "chatnode", or "chatnode 'n1'" for a node given a name of its own."""
    name = config.node.name
    return "chatnode" if name == "chatnode" else f"chatnode {name!r}"


def _tune_gc() -> None:
    """Fewer, cheaper garbage collections. The node holds many long-lived objects (tasks,
    sessions, chat state) and makes little cyclic garbage; with the default thresholds a
    full collection walked them all every few seconds and stalled delivery by 100-400 ms
    (bench: p99 at 1,000 msg/s fell from ~300 ms to ~6 ms with these settings)."""
    import gc

    gc.freeze()  # what start-up allocated is never scanned again
    gc.set_threshold(50_000, 50, 100)


def _tune_gil() -> None:
    """The LMDB commit thread needs the interpreter lock a few times per commit; behind a
    busy event loop each hand-over waited the default 5 ms switch interval, capping
    commits (and so durable acks) far below what the disk can do."""
    sys.setswitchinterval(0.0005)


def _raise_open_files_limit() -> None:
    """Every connection is a file descriptor: allow as many as the system lets us."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def _print_plugins(plugins: list[dict], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(plugins, indent=2))
        return
    width = max(len(p["name"]) for p in plugins) if plugins else 4
    for p in plugins:
        origin = "built in" if p["builtin"] else "installed"
        print(f"{p['name']:<{width}}  {p['version']:<10}  {origin:<9}  {', '.join(p['hooks'])}")


def _media_copy(args: argparse.Namespace, config: Config) -> int:
    """`chatnode media copy`: see node/plugins/media/copy.py."""
    from pathlib import Path

    from .plugins.media.copy import copy_to_store

    try:
        settings = Plugins(config.plugins, node_version=VERSION).settings("media")
    except (ConfigError, KeyError) as exc:
        print(f"chatnode: config error: {exc}", file=sys.stderr)
        return 2
    source = Path(args.source) if args.source else config.data_dir / settings.dir
    if not source.is_dir():
        print(f"chatnode: no local media at {source}", file=sys.stderr)
        return 2
    try:
        counts = copy_to_store(settings, source, quick=args.quick, say=lambda line: print(line, flush=True))
    except ValueError as exc:
        print(f"chatnode: {exc}", file=sys.stderr)
        return 2
    return 1 if counts["failed"] else 0
def _config_path(args: argparse.Namespace) -> str | None:
    """The config to load: `--config`; for `chatnode admin` and `chatnode cluster members`,
    config.toml if there is one (a command given the node's --url needs none), else the
    built-in defaults."""
    if hasattr(args, "config"):
        return args.config
    if args.command in ("admin", "cluster") and not Path("config.toml").exists():
        return None
    return "config.toml"


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # whoever read the output left (`chatnode admin ... | head`): that is no failure to
        # report with a traceback; stdout goes nowhere so that the exit flushes nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(_config_path(args))
    except ConfigError as exc:
        print(f"chatnode: config error: {exc}", file=sys.stderr)
        return 2
    if args.command in ("check-config", "plugins"):
        try:
            if args.command == "check-config":
                preflight.check_data_dir(config)
            plugins = Plugins(config.plugins, node_version=VERSION)  # loads them and checks their sections
        except ConfigError as exc:
            print(f"chatnode: config error: {exc}", file=sys.stderr)
            return 2
        if args.command == "plugins":
            _print_plugins(plugins.describe(), as_json=args.json)
        else:
            print(f"{args.config}: ok")
        return 0
    if args.command == "media":
        return _media_copy(args, config)
    if args.command == "storage":
        return _storage_command(args, config)
    if args.command == "cluster":
        from .cluster.cli import run_cluster_command

        return run_cluster_command(args, config)
    if args.command == "admin":
        from .admin_cli import run_admin_command

        return run_admin_command(args, config)
    if args.command in ("backup", "restore"):
        from .backup import run_backup_command

        return run_backup_command(args, config)
    try:
        lock = preflight.prepare_data_dir(config)  # held until the process exits
    except ConfigError as exc:
        print(f"chatnode: config error: {exc}", file=sys.stderr)
        return 2
    _raise_open_files_limit()
    _tune_gc()
    _tune_gil()
    logs.configure(args.log_level or config.log.level, config.log.format)
    try:
        with lock:
            trio.run(_serve, config)
    except KeyboardInterrupt:
        return 130
    except (ConfigError, StorageError) as exc:  # found while starting: one line, no traceback
        print(f"chatnode: {exc}", file=sys.stderr)
        return 2
    except ExceptionGroup as group:  # a refused start-up is one line, not a traceback
        from .cluster.cli import start_error_message

        problem = _first_leaf(group, (ConfigError, StorageError))
        message = str(problem) if problem is not None else start_error_message(group)
        if message is None:
            raise
        print(f"chatnode: {message}", file=sys.stderr)
        return 2
    return 0
