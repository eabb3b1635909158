"""``chatnode admin ...``: accounts, devices, chats and statistics, for operators (docs/admin.md).

Against a running node, every command goes through the admin API (/api/admin/...), with
the admin token from ``--token``, ``$CHATNODE_ADMIN_TOKEN`` or the config's
``[admin] token`` (none: the node answers loopback clients only). On a stopped node's data
(``--offline``, or by itself when no node holds an LMDB data dir), the same commands run
on the storage directly, with the same answers, except those that need the node:

- LMDB: offline only while no node holds the data dir's lock; the command holds it
  meanwhile, so no node starts under it.
- PostgreSQL: reading works any time; changing anything offline is refused while a node is
  connected to the database (its caches would not hear of it): use the admin API of a
  running node then.
- ``users delete`` always needs a running node: the account leaves its groups through the
  sequencer, and the plugins and the other nodes must hear of it.

Devices logged out offline are told to the plugins (the push plugin drops their push
targets) when a node next starts.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator
from typing import IO, Any
from urllib.parse import quote

import trio

from .config import Config

TOKEN_ENV = "CHATNODE_ADMIN_TOKEN"
TOKEN_HINT = f"admin endpoints need the admin token (--token, ${TOKEN_ENV} or [admin] token)"


def admin_token(explicit: str | None, config: Config) -> str:
    """The admin token a command uses: `--token`, else the environment, else the config."""
    return explicit or os.environ.get(TOKEN_ENV) or config.admin.token
#: Commands that change something (refused offline while a PostgreSQL database is in use).
WRITES = {("users", "create"), ("users", "disable"), ("users", "enable"), ("users", "delete"),
          ("users", "password"), ("devices", "revoke")}


class CliError(Exception):
    """A command failed: one line for stderr, and the exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = code


# -- arguments --------------------------------------------------------------------------------


def add_admin_commands(commands: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", default=argparse.SUPPRESS,
                        help="the node's config.toml (default: config.toml)")
    common.add_argument("--url", default=argparse.SUPPRESS, help="the node's HTTP URL (default: from the config)")
    common.add_argument("--token", default=argparse.SUPPRESS,
                        help=f"the admin token (default: ${TOKEN_ENV}, else the config's [admin] token)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON, for scripts")
    mode = common.add_mutually_exclusive_group()
    mode.add_argument("--online", action="store_true", default=argparse.SUPPRESS,
                      help="only through the running node's admin API")
    mode.add_argument("--offline", action="store_true", default=argparse.SUPPRESS,
                      help="only on the stopped node's storage")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="seconds to wait for the node")

    admin = commands.add_parser("admin", help="manage accounts, devices and chats; node statistics",
                                parents=[common], description="See docs/admin.md.")
    groups = admin.add_subparsers(dest="admin_group", required=True)

    users = groups.add_parser("users", help="accounts", parents=[common])
    sub = users.add_subparsers(dest="admin_command", required=True)
    p = sub.add_parser("list", help="list accounts by username", parents=[common])
    p.add_argument("--prefix", default="", help="usernames starting with this")
    p.add_argument("--after", default="", help="the page after this username")
    p.add_argument("--limit", type=int, default=100)
    p = sub.add_parser("find", help="accounts whose id is TEXT, or whose username or display name contains it",
                       parents=[common])
    p.add_argument("text")
    p.add_argument("--limit", type=int, default=100)
    p = sub.add_parser("show", help="one account: its state, devices and chats", parents=[common])
    p.add_argument("user", help="a username or a user id")
    p = sub.add_parser("create", help="create an account (even with registration closed)", parents=[common])
    p.add_argument("username")
    p.add_argument("--display-name", default=None)
    _password_options(p)
    for name, text in (("disable", "log out every device and refuse logins"), ("enable", "allow logins again")):
        p = sub.add_parser(name, help=text, parents=[common])
        p.add_argument("user", help="a username or a user id")
    p = sub.add_parser("password", help="set a new password (every device is logged out)", parents=[common])
    p.add_argument("user", help="a username or a user id")
    _password_options(p)
    p = sub.add_parser("delete", help="delete an account (its messages stay, from 'Deleted account')",
                       parents=[common])
    p.add_argument("user", help="a username or a user id")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    devices = groups.add_parser("devices", help="logged-in devices", parents=[common])
    sub = devices.add_subparsers(dest="admin_command", required=True)
    p = sub.add_parser("list", help="a user's logged-in devices", parents=[common])
    p.add_argument("user", help="a username or a user id")
    p = sub.add_parser("revoke", help="log out some or all devices of a user", parents=[common])
    p.add_argument("user", help="a username or a user id")
    p.add_argument("device_ids", nargs="*", metavar="DEVICE_ID")
    p.add_argument("--all", action="store_true", help="every device of the user")

    chats = groups.add_parser("chats", help="chats", parents=[common])
    sub = chats.add_subparsers(dest="admin_command", required=True)
    p = sub.add_parser("members", help="a chat and its members", parents=[common])
    p.add_argument("chat_id")
    p.add_argument("--all", action="store_true", help="former members too")

    p = groups.add_parser("stats", help="the node's and the cluster's statistics", parents=[common])
    p.add_argument("--counts", action="store_true", help="also count accounts, devices, chats (reads everything)")


def _password_options(parser: argparse.ArgumentParser) -> None:
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    how.add_argument("--random-password", action="store_true", help="make a random password and print it")


def _option(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    return getattr(args, name, default)


# -- running ----------------------------------------------------------------------------------


def run_admin_command(args: argparse.Namespace, config: Config, out: IO[str] | None = None) -> int:
    """`chatnode admin ...` (after the config is loaded): the exit code."""
    out = out or sys.stdout
    try:
        password = _read_password(args)
        return trio.run(run_admin, args, config, out, password)
    except CliError as exc:
        print(f"chatnode: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _read_password(args: argparse.Namespace) -> str | None:
    """The password of `users create` / `users password`, asked for before anything runs."""
    if (args.admin_group, getattr(args, "admin_command", "")) not in (("users", "create"), ("users", "password")):
        return None
    if args.random_password:
        return secrets.token_urlsafe(12)
    if args.password_stdin:
        line = sys.stdin.readline()
        if not line.strip():
            raise CliError("no password on stdin", 2)
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise CliError("give --password-stdin or --random-password (stdin is not a terminal)", 2)
    first = getpass.getpass("new password: ")
    if getpass.getpass("again: ") != first:
        raise CliError("the passwords differ", 2)
    return first


async def run_admin(args: argparse.Namespace, config: Config, out: IO[str], password: str | None = None) -> int:
    """Run one admin command, online or offline (see the module docstring)."""
    from .app import _first_leaf
    from .storage import StorageError

    try:
        return await _run_admin(args, config, out, password)
    except BaseExceptionGroup as group:  # from the storage's nursery: one line, as anywhere else
        problem = _first_leaf(group, (CliError, StorageError))
        if isinstance(problem, StorageError):
            raise CliError(str(problem)) from None
        if problem is not None:
            raise problem from None
        raise


async def _run_admin(args: argparse.Namespace, config: Config, out: IO[str], password: str | None) -> int:
    command = (args.admin_group, getattr(args, "admin_command", ""))
    if command == ("users", "delete") and not args.yes:
        if not sys.stdin.isatty():
            raise CliError("deleting an account cannot be undone: add --yes", 2)
        answer = await trio.to_thread.run_sync(input, f"delete the account {args.user!r}? It cannot be undone. [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise CliError("not deleted", 1)
    async with _backend(args, config, writes=command in WRITES) as backend:
        result = await _call(backend, args, command, password)
        if _option(args, "json"):
            print(json.dumps(result, indent=2, ensure_ascii=False), file=out)
        else:
            print(render(command, result, args, password), file=out)
        if isinstance(backend, Local) and backend.revoked:
            print(f"({_count(backend.revoked, 'logged-out device')} told to the plugins when a node next starts)",
                  file=sys.stderr)
    return 0


async def _call(backend: Remote | Local, args: argparse.Namespace, command: tuple[str, str],
                password: str | None) -> dict[str, Any]:
    group, name = command
    if group == "users":
        if name == "list":
            return await backend.list_users(args.prefix, args.after, _limit(args.limit))
        if name == "find":
            return await backend.find_users(args.text, _limit(args.limit))
        if name == "show":
            return await backend.show_user(args.user)
        if name == "create":
            body = {"username": args.username, "password": password}
            if args.display_name is not None:
                body["display_name"] = args.display_name
            return await backend.create_user(body)
        if name in ("disable", "enable"):
            return await backend.set_disabled(args.user, name == "disable")
        if name == "password":
            return await backend.set_password(args.user, {"password": password})
        if name == "delete":
            return await backend.delete_user(args.user)
    if group == "devices":
        if name == "list":
            return await backend.devices(args.user)
        if bool(args.all) == bool(args.device_ids):
            raise CliError("give the devices' ids, or --all", 2)
        return await backend.revoke_devices(args.user, None if args.all else args.device_ids)
    if group == "chats":
        return await backend.chat(args.chat_id, former=args.all)
    return await backend.node_view(counts=args.counts)


def _limit(value: int) -> int:
    if not 1 <= value <= 1000:
        raise CliError("--limit must be between 1 and 1000", 2)
    return value


@contextlib.asynccontextmanager
async def _backend(args: argparse.Namespace, config: Config, *, writes: bool) -> AsyncIterator[Remote | Local]:
    """The running node's admin API, or the stopped node's storage (module docstring)."""
    url = _option(args, "url")
    token = admin_token(_option(args, "token"), config)
    timeout = _option(args, "timeout", 10.0)
    online, offline = _option(args, "online", False), _option(args, "offline", False)
    if url or online:
        async with Remote.open(url or node_url(config), token, timeout) as remote:
            yield remote
        return
    if not offline:
        from .storage.liveness import data_dir_in_use

        if config.storage.engine == "lmdb":
            use_node = data_dir_in_use(config.data_dir)
        else:  # the node may run elsewhere: ask it first
            use_node = await Remote.reachable(node_url(config), token)
        if use_node:
            async with Remote.open(node_url(config), token, timeout) as remote:
                yield remote
            return
    async with Local.open(config, writes=writes) as local:
        yield local


def node_url(config: Config) -> str:
    """Where the node on this config listens (its own address, not the public URL, so
    that a node without an admin token sees a loopback client)."""
    http = config.http
    if not http.port:
        raise CliError("the config has no fixed http.port: give the node's --url", 2)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(http.host, http.host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{http.port}"


# -- online: the admin API ----------------------------------------------------------------------


class Remote:
    """The admin API of a running node."""

    def __init__(self, client: Any, url: str) -> None:
        self._client = client
        self.url = url

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str, token: str, timeout: float) -> AsyncIterator[Remote]:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=timeout) as client:
            yield cls(client, url)

    @staticmethod
    async def reachable(url: str, token: str) -> bool:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with httpx.AsyncClient(headers=headers, timeout=3.0) as client:
                await client.get(url.rstrip("/") + "/healthz")
        except httpx.HTTPError:
            return False
        return True

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        import httpx

        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the node at {self.url} ({exc or type(exc).__name__}); is it running? "
                           "On a stopped node's data, use --offline") from None
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                message = f"{error['message']} ({error['code']})"
            except (ValueError, KeyError, TypeError):
                message = f"{response.status_code} {response.text[:200]}"
            if response.status_code in (401, 403) and path.startswith("/api/admin"):
                message += f"; {TOKEN_HINT}"
            raise CliError(message)
        return response.json() if response.content else {}

    @staticmethod
    def _user(ref: str) -> str:
        return "/api/admin/users/" + quote(ref, safe="")

    async def list_users(self, prefix: str, after: str, limit: int) -> dict[str, Any]:
        return await self._call("GET", "/api/admin/users", params={"prefix": prefix, "after": after, "limit": limit})

    async def find_users(self, text: str, limit: int) -> dict[str, Any]:
        return await self._call("GET", "/api/admin/users", params={"q": text, "limit": limit})

    async def show_user(self, ref: str) -> dict[str, Any]:
        return await self._call("GET", self._user(ref))

    async def create_user(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "/api/admin/users", json=body)

    async def set_disabled(self, ref: str, disabled: bool) -> dict[str, Any]:
        return await self._call("POST", self._user(ref) + ("/disable" if disabled else "/enable"))

    async def set_password(self, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", self._user(ref) + "/password", json=body)

    async def delete_user(self, ref: str) -> dict[str, Any]:
        return await self._call("DELETE", self._user(ref))

    async def devices(self, ref: str) -> dict[str, Any]:
        return await self._call("GET", self._user(ref) + "/devices")

    async def revoke_devices(self, ref: str, device_ids: list[str] | None) -> dict[str, Any]:
        if device_ids is None:
            return await self._call("DELETE", self._user(ref) + "/devices")
        revoked = 0
        for device_id in device_ids:
            revoked += (await self._call("DELETE", f"{self._user(ref)}/devices/{quote(device_id, safe='')}"))["revoked"]
        return {"revoked": revoked}

    async def chat(self, chat_id: str, *, former: bool) -> dict[str, Any]:
        return await self._call("GET", f"/api/admin/chats/{quote(chat_id, safe='')}",
                                params={"all": "1"} if former else {})

    async def node_view(self, *, counts: bool) -> dict[str, Any]:
        return await self._call("GET", "/api/admin/node", params={"counts": "1"} if counts else {})


# -- offline: the storage -------------------------------------------------------------------------


class Local:
    """The same commands on a stopped node's storage (node/core/admin.py)."""

    def __init__(self, admin: Any, config: Config) -> None:
        self._admin = admin
        self._config = config
        self.revoked = 0

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, config: Config, *, writes: bool) -> AsyncIterator[Local]:
        from .storage.liveness import InUse, lock_data_dir, node_sessions

        if config.storage.engine == "lmdb":
            if not (config.data_dir / "db").is_dir():
                raise CliError(f"no node data at {config.data_dir / 'db'} (node.data_dir in the config)", 2)
            try:
                with lock_data_dir(config.data_dir):
                    async with cls._open(config) as local:
                        yield local
            except InUse as exc:
                raise CliError(f"{exc}: run the command without --offline (it then uses the node's admin API)") \
                    from None
            return
        if writes:
            from .storage import StorageError

            try:
                sessions = await trio.to_thread.run_sync(node_sessions, config.storage.dsn)
            except StorageError as exc:
                raise CliError(str(exc)) from None
            if sessions:
                raise CliError(f"nodes are connected to the database ({', '.join(sessions[:5])}): change it through a "
                               "running node's admin API (--url), not offline")
        async with cls._open(config) as local:
            yield local

    @classmethod
    @contextlib.asynccontextmanager
    async def _open(cls, config: Config) -> AsyncIterator[Local]:
        from .app import _high_water_key, _read_id_high_water
        from .core.accounts import Accounts, Device
        from .core.admin import Admin, queue_offline_revocation
        from .core.chats import now_ms
        from .core.snowflake import SnowflakeGenerator
        from .storage import StorageError, WriteBatch, open_storage

        print(f"(offline: working on {_where(config)})", file=sys.stderr)
        try:
            async with open_storage(config.storage, config.data_dir, now=now_ms) as storage:
                node_id = config.node.id
                ids = SnowflakeGenerator(node_id, after=await _read_id_high_water(storage, node_id))

                def id_high_water() -> WriteBatch:
                    batch = WriteBatch()
                    batch.put_meta(_high_water_key(node_id), ids.last_id.to_bytes(8, "big"))
                    return batch

                storage.add_commit_hook(id_high_water)
                revoked: list[Device] = []
                accounts = Accounts(storage, ids, config.accounts, on_revoke=revoked.append)
                local = cls(Admin(accounts, storage, None), config)
                try:
                    yield local
                finally:
                    if revoked:
                        batch = WriteBatch()
                        for device in revoked:
                            queue_offline_revocation(batch, device)
                        with trio.CancelScope(shield=True):
                            await storage.write(batch)
                        local.revoked = len(revoked)
        except StorageError as exc:
            raise CliError(str(exc)) from None

    async def _run(self, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        from .core.errors import ChatError

        try:
            return await getattr(self._admin, method)(*args, **kwargs)
        except ChatError as exc:
            raise CliError(f"{exc.message} ({exc.code})") from None

    async def list_users(self, prefix: str, after: str, limit: int) -> dict[str, Any]:
        return await self._run("list_users", prefix, after, limit)

    async def find_users(self, text: str, limit: int) -> dict[str, Any]:
        return await self._run("find_users", text, limit)

    async def show_user(self, ref: str) -> dict[str, Any]:
        return await self._run("show_user", ref)

    async def create_user(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._run("create_user", body)

    async def set_disabled(self, ref: str, disabled: bool) -> dict[str, Any]:
        return await self._run("set_disabled", ref, disabled)

    async def set_password(self, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._run("set_password", ref, body)

    async def delete_user(self, ref: str) -> dict[str, Any]:
        raise CliError("deleting an account needs the running node (the account leaves its groups through it, and "
                       "the plugins hear of it): start the node and run this again")

    async def devices(self, ref: str) -> dict[str, Any]:
        return await self._run("devices", ref)

    async def revoke_devices(self, ref: str, device_ids: list[str] | None) -> dict[str, Any]:
        return await self._run("revoke_devices", ref, device_ids)

    async def chat(self, chat_id: str, *, former: bool) -> dict[str, Any]:
        from .core.snowflake import parse_id

        try:
            number = parse_id(chat_id)
        except ValueError:
            raise CliError(f"{chat_id!r} is not a chat id", 2) from None
        return await self._run("chat", number, former=former)

    async def node_view(self, *, counts: bool) -> dict[str, Any]:
        storage = self._admin.storage
        info = storage.info
        node = {"id": self._config.node.id, "name": self._config.node.name, "version": _version(),
                "engine": info.name, "schema_version": info.schema_version, "location": info.location,
                "running": False}
        return {"node": node, "counts": await self._run("counts")}


def _where(config: Config) -> str:
    if config.storage.engine == "lmdb":
        return str(config.data_dir / "db")
    from .storage.postgres import public_dsn

    return f"PostgreSQL {public_dsn(config.storage.dsn)}"


def _version() -> str:
    from .app import VERSION

    return VERSION


# -- output for people ------------------------------------------------------------------------------


def when(ms: int | None) -> str:
    """Unix ms as UTC minutes, or '-'."""
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ms / 1000))


def table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    cells = [tuple(str(c) for c in row) for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def state(user: dict[str, Any]) -> str:
    if user.get("deleted"):
        return f"deleted {when(user['deleted'])}"
    if user.get("disabled"):
        return f"disabled {when(user['disabled'])}"
    return "service" if user.get("service") else "active"


def _count(n: int, thing: str, things: str = "") -> str:
    return f"{n} {thing}" if n == 1 else f"{n} {things or thing + 's'}"


def _name(user: dict[str, Any]) -> str:
    return f"{user['username']} (id {user['id']})"


def _users_table(users: list[dict[str, Any]]) -> str:
    return table(("ID", "USERNAME", "DISPLAY NAME", "CREATED", "STATE"),
                 [(u["id"], u["username"], u["display_name"], when(u["created"]), state(u)) for u in users])


def _devices_table(devices: list[dict[str, Any]]) -> str:
    if not devices:
        return "no devices logged in"
    return table(("DEVICE", "NAME", "LOGGED IN", "LAST USED", "EXPIRES"),
                 [(d["device_id"], d["name"] or "-", when(d["created"]), when(d["last_used"]), when(d.get("expires")))
                  for d in devices])


def render(command: tuple[str, str], result: dict[str, Any], args: argparse.Namespace, password: str | None) -> str:
    """A command's answer as text for people."""
    group, name = command
    new_password = f"\npassword: {password}" if password and _option(args, "random_password") else ""
    if group == "users" and name in ("list", "find"):
        users = result["users"]
        text = _users_table(users) if users else "no users found"
        if result.get("next"):
            text += f"\n(more: --after {result['next']})"
        if result.get("more"):
            text += "\n(more: raise --limit or narrow the text)"
        return text
    if group == "users" and name == "show":
        user = result["user"]
        lines = [f"{k:<13}{v}" for k, v in (
            ("id", user["id"]), ("username", user["username"]), ("display name", user["display_name"]),
            ("created", when(user["created"])), ("state", state(user)), ("chats", result["chats"]))]
        return "\n".join(lines) + "\n\n" + _devices_table(result["devices"])
    if group == "users":
        user = result.get("user", {})
        if name == "create":
            return f"created {_name(user)}{new_password}"
        if name == "disable":
            return f"disabled {_name(user)}: {_count(result['revoked'], 'device')} logged out"
        if name == "enable":
            return f"enabled {_name(user)}"
        if name == "password":
            return f"new password set for {_name(user)}: {_count(result['revoked'], 'device')} logged out{new_password}"
        if name == "delete":
            return (f"deleted {user['id']}: {_count(result['revoked'], 'device')} logged out, left "
                    f"{_count(result['groups_left'], 'group')}; its messages stay, shown as from \"Deleted account\"")
    if group == "devices":
        if name == "list":
            return f"{_name(result['user'])}\n\n{_devices_table(result['devices'])}"
        return f"logged out {_count(result['revoked'], 'device')}"
    if group == "chats":
        chat = result["chat"]
        title = f"group {chat['title']!r}" if chat["kind"] == "group" else "1-1 chat"
        entries = _count(chat["last_seq"], "log entry", "log entries")
        head = f"{title} {chat['id']}: {_count(chat['members'], 'member')}, {entries}, created {when(chat['created'])}"
        rows = [(m["user"]["id"], m["user"].get("username", "?"), m["role"], when(m["joined"]), m["delivered_seq"],
                 m["read_seq"], "-" if m["current"] else f"left at {m['until_seq']}") for m in result["members"]]
        return head + "\n\n" + table(("ID", "USERNAME", "ROLE", "JOINED", "DELIVERED", "READ", "LEFT"), rows)
    return _render_stats(result)


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        out = []
        for key, inner in value.items():
            out += _flatten(f"{prefix}.{key}" if prefix else str(key), inner)
        return out
    return [(prefix, value)]


def _render_stats(result: dict[str, Any]) -> str:
    node = result["node"]
    lines = [f"node {node['id']} {node['name']!r}, chatnode {node['version']}, {node['engine']} "
             f"(schema {node['schema_version']}) at {node['location']}"]
    if node.get("running") is False:
        lines[0] += " (stopped)"
    else:
        lines.append(f"serving {node['http_url']} and {node['ws_url']} since {when(node['started'])} UTC")
    for title in ("statistics", "counts"):
        if title in result:
            lines += ["", *(f"{k:<44}{v}" for k, v in _flatten("", result[title]))]
    if "cluster" in result:
        from .cluster.cli import format_members

        lines += ["", format_members(result["cluster"])]
    return "\n".join(lines)
