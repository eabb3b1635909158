"""The `chatnode` command: serve a node, check a config."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

import trio

from . import logs, preflight
from .app import VERSION, _first_leaf, serve_node
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


async def _serve(config: Config) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def run_node(task_status: trio.TaskStatus) -> None:
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


def _config_path(args: argparse.Namespace) -> str | None:
    """The config to load: `--config`; for `chatnode admin`, config.toml if there is one
    (a command given the node's --url needs none), else the built-in defaults."""
    if hasattr(args, "config"):
        return args.config
    if args.command == "admin" and not Path("config.toml").exists():
        return None
    return "config.toml"


def main(argv: list[str] | None = None) -> int:
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
