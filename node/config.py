"""Node configuration: `config.toml` read with tomllib into frozen attrs sections via cattrs.

Every section is an ``@attrs.frozen`` class with defaults, so an empty file is a valid
config. Unknown keys, wrong types and out-of-range values stop start-up with one line
that names the key (``ConfigError``); nothing is ignored silently.
"""

from __future__ import annotations

import errno
import re
import socket
import tomllib
from pathlib import Path
from typing import Any

import attrs
import cattrs
from cattrs.errors import ForbiddenExtraKeysError

from .cluster.config import ClusterConfig


class ConfigError(Exception):
    """The configuration is invalid; the message names the offending key."""


def _in_range(lo: float | None = None, hi: float | None = None):
    def check(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            if hi is None:
                bound = f">= {lo}"
            elif lo is None:
                bound = f"<= {hi}"
            else:
                bound = f"between {lo} and {hi}"
            raise ValueError(f"{attribute.name}: must be {bound}, got {value!r}")

    return check


def _one_of(*choices: str):
    def check(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            raise ValueError(f"{attribute.name}: must be one of {', '.join(choices)}; got {value!r}")

    return check


def _int(default: int, lo: int | None = None, hi: int | None = None) -> Any:
    return attrs.field(default=default, validator=_in_range(lo, hi))


def _float(default: float, lo: float | None = None, hi: float | None = None) -> Any:
    return attrs.field(default=default, validator=_in_range(lo, hi))


@attrs.frozen
class NodeSection:
    """Identity of this node and where it keeps its data."""

    id: int = _int(0, 0, 1023)  # the 10-bit node id inside every Snowflake this node mints
    name: str = "chatnode"
    data_dir: str = "./data"  # relative paths are resolved against the config file's folder


def _addresses(_instance: Any, attribute: attrs.Attribute, value: list[str]) -> None:
    import ipaddress

    for entry in value:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"{attribute.name}: {entry!r} is not an IP address or network") from None


def _origins(_instance: Any, attribute: attrs.Attribute, value: list[str]) -> None:
    from urllib.parse import urlsplit

    for entry in value:
        parts = urlsplit(entry) if isinstance(entry, str) else None
        if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
                or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username):
            raise ValueError(f"{attribute.name}: {entry!r} is not a web origin (scheme://host[:port], no path)")


def _url(*schemes: str):
    """A URL clients are told: one of `schemes`, a host, no query or fragment ("" is none)."""

    def check(_instance: Any, attribute: attrs.Attribute, value: str) -> None:
        from urllib.parse import urlsplit

        if not value:
            return
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.hostname or parts.query or parts.fragment:
            starts = " or ".join(f"{scheme}://" for scheme in schemes)
            example = f"{schemes[-1]}://chat.example.com{'/ws' if 'ws' in schemes else ''}"
            raise ValueError(f"{attribute.name}: must be a URL starting with {starts} and a host, without a query "
                             f"(for example {example}), got {value!r}")

    return check


def _url_path(_instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if not re.fullmatch(r"/[\x21-\x7e]*", value) or "?" in value or "#" in value:
        raise ValueError(f"{attribute.name}: {value!r} is not a URL path (it starts with /, for example \"/ws\")")


@attrs.frozen
class HttpSection:
    """The HTTP listener: REST API, web client and media (hypercorn + quart-trio)."""

    host: str = "127.0.0.1"
    port: int = _int(8080, 0, 65535)  # 0 picks a free port
    public_url: str = attrs.field(default="", validator=_url("http", "https"))  # what clients are told, e.g. behind a proxy
    graceful_timeout: float = _float(5.0, 0.0, 300.0)  # seconds to drain on shutdown (idle connections close at once)
    body_timeout: float = _float(10.0, 0.1, 3600.0)  # seconds a JSON request body may take to arrive
    # reverse proxies whose X-Forwarded-For/-Proto are believed (addresses or networks)
    trusted_proxies: list[str] = attrs.field(factory=list, validator=_addresses)
    # web origins besides the cluster's members whose pages may call the API (CORS) and
    # open the chat socket, e.g. "https://chat.example.com" (node/web/cors.py)
    allowed_origins: list[str] = attrs.field(factory=list, validator=_origins)


@attrs.frozen
class WebSocketSection:
    """The chat WebSocket listener (node/core/websocket.py on bare trio sockets: the hot path)."""

    host: str = "127.0.0.1"
    port: int = _int(8081, 0, 65535)
    path: str = attrs.field(default="/ws", validator=_url_path)
    public_url: str = attrs.field(default="", validator=_url("ws", "wss"))  # announced by GET /api/info; default ws://host:port/ws
    tcp_user_timeout: float = _float(10.0, 1.0, 600.0)  # seconds before a stalled peer is cut


@attrs.frozen
class LimitsSection:
    """Per-connection and per-message limits; violations get documented errors."""

    max_message_bytes: int = _int(16_384, 64, 1_048_576)  # UTF-8 bytes of one message's text
    max_frame_bytes: int = _int(262_144, 1024, 16_777_216)  # one WebSocket frame; larger closes 1009
    max_events_per_frame: int = _int(256, 1, 4096)  # events a client may put in one frame
    frames_per_second: float = _float(50.0, 1.0, 100_000.0)  # sustained inbound frames per connection
    frame_burst: int = _int(200, 1, 1_000_000)  # inbound frames allowed in a burst
    user_messages_per_second: float = _float(20.0, 0.01, 1_000_000.0)  # sustained sends per user, all devices
    user_message_burst: int = _int(300, 1, 100_000_000)  # sends per user allowed in a burst
    max_connections_per_user: int = _int(10, 1, 10_000)
    max_connections_per_address: int = _int(64, 1, 1_000_000)  # open sockets per client address, both ports
    reserved_fds: int = _int(128, 16, 1_000_000)  # file descriptors kept free for the node and the admin
    outgoing_queue: int = _int(1024, 16, 1_000_000)  # queued events per connection before it is cut
    hello_timeout: float = _float(10.0, 0.1, 600.0)  # seconds to authenticate after connecting
    history_page: int = _int(200, 1, 10_000)  # most messages per history or sync page
    max_group_members: int = _int(500, 2, 100_000)
    edit_window: float = _float(900.0, 0.0, 31_536_000.0)  # seconds a sender may edit a message


@attrs.frozen
class AccountsSection:
    """Registration, passwords, tokens and login rate limits."""

    registration_open: bool = True
    min_password_length: int = _int(8, 1, 1024)
    argon2_time_cost: int = _int(3, 1, 100)
    argon2_memory_kib: int = _int(65_536, 8, 4_194_304)
    argon2_parallelism: int = _int(1, 1, 64)
    login_delay_after: int = _int(5, 0, 1_000_000)  # failed logins per user and address before delays begin
    login_delay: float = _float(1.0, 0.001, 86_400.0)  # seconds of the first delay; doubles per further failure ...
    login_max_delay: float = _float(300.0, 0.001, 86_400.0)  # ... up to this
    login_failures_per_user: int = _int(5, 1, 1_000_000)  # per window, from addresses the user never logged in from
    login_failures_per_address: int = _int(20, 1, 1_000_000)  # failed logins per address per window
    login_window: float = _float(60.0, 1.0, 86_400.0)  # seconds
    token_idle_timeout: float = _float(2_592_000.0, 0.0, 3_153_600_000.0)  # seconds unused, then it expires; 0: never
    token_max_age: float = _float(31_536_000.0, 0.0, 3_153_600_000.0)  # seconds after the login it expires; 0: never


@attrs.frozen
class StorageSection:
    """Where durable state lives: LMDB under data_dir/db (one node) or PostgreSQL (a cluster)."""

    engine: str = attrs.field(default="lmdb", validator=_one_of("lmdb", "postgresql"))
    dsn: str = ""  # postgresql: a libpq connection string or URI (required with that engine)
    pool_size: int = _int(8, 1, 1000)  # postgresql: connections (one writer, the rest for reads)
    commit_timeout: float = _float(10.0, 0.1, 600.0)  # postgresql: a commit slower than this counts as failed (outcome unknown)
    map_size_mb: int = _int(1024, 1, 1 << 24)  # initial map size; grows on demand
    max_map_size_mb: int = _int(1 << 20, 1, 1 << 24)  # growth stops here with a clear error
    max_batch: int = _int(2048, 1, 100_000)  # write requests folded into one transaction
    sync: bool = True  # fsync each commit; never turn off where acks must survive power loss
    sweep_interval: float = _float(30.0, 0.05, 86_400.0)  # seconds between purges (expired messages, old dedupe)
    dedupe_retention: float = _float(604_800.0, 1.0, 315_360_000.0)  # seconds a client_msg_id is remembered


MIN_ADMIN_TOKEN, MAX_ADMIN_TOKEN = 32, 512  # characters


def _admin_token(_instance: Any, _attribute: attrs.Attribute, value: str) -> None:
    if value and not re.fullmatch(rf"[\x21-\x7e]{{{MIN_ADMIN_TOKEN},{MAX_ADMIN_TOKEN}}}", value):
        raise ValueError(f"token: must be at least {MIN_ADMIN_TOKEN} (and at most {MAX_ADMIN_TOKEN}) printable ASCII "
                         f"characters without spaces (got {len(value)}); make one with `openssl rand -hex 32`")


@attrs.frozen
class AdminSection:
    """Admin HTTP endpoints (/api/admin/...)."""

    # required as "Authorization: Bearer <token>"; empty = loopback clients only (refused when the
    # node is reachable through a proxy: see check_exposure)
    token: str = attrs.field(default="", validator=_admin_token)


@attrs.frozen
class PluginsSection:
    """Which plugins run and their own sections (``[plugins.<name>]``)."""

    disabled: list[str] = attrs.Factory(list)  # plugin names not to load
    event_queue: int = _int(8192, 1, 1_000_000)  # notifications queued per plugin before dropping (> one sequencer batch)
    settings: dict[str, dict[str, Any]] = attrs.Factory(dict)  # the [plugins.<name>] tables


@attrs.frozen
class LogSection:
    """What the node logs to stderr, and how (docs/operations.md, "Logs")."""

    level: str = attrs.field(default="INFO", validator=_one_of("DEBUG", "INFO", "WARNING", "ERROR"))
    format: str = attrs.field(default="text", validator=_one_of("text", "json"))  # json: one object per line
    access: bool = True  # one line per HTTP request (method, path, status, duration, request id)


@attrs.frozen
class Config:
    node: NodeSection = attrs.Factory(NodeSection)
    http: HttpSection = attrs.Factory(HttpSection)
    websocket: WebSocketSection = attrs.Factory(WebSocketSection)
    limits: LimitsSection = attrs.Factory(LimitsSection)
    accounts: AccountsSection = attrs.Factory(AccountsSection)
    storage: StorageSection = attrs.Factory(StorageSection)
    admin: AdminSection = attrs.Factory(AdminSection)
    log: LogSection = attrs.Factory(LogSection)
    cluster: ClusterConfig = attrs.Factory(ClusterConfig)
    plugins: PluginsSection = attrs.Factory(PluginsSection)
    base_dir: str = "."  # folder relative paths resolve against; set by load_config

    @property
    def data_dir(self) -> Path:
        return (Path(self.base_dir) / self.node.data_dir).resolve()


def _strict(kind: type, name: str):
    def structure(value: Any, _type: Any) -> Any:
        # bool is an int subclass in Python; a TOML `true` must never pass for a number
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {name}, got a boolean")
        if kind is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, kind):
            raise TypeError(f"expected {name}, got {type(value).__name__} {value!r}")
        return value

    return structure


def make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(int, _strict(int, "an integer"))
    conv.register_structure_hook(float, _strict((int, float), "a number"))  # type: ignore[arg-type]
    conv.register_structure_hook(str, _strict(str, "a string"))
    conv.register_structure_hook(bool, _strict(bool, "true or false"))
    conv.register_structure_hook_func(lambda t: t == list[str], _string_list)
    return conv


def _string_list(value: Any, _type: Any) -> list[str]:
    # without this, cattrs would turn "127.0.0.1" into ["1", "2", "7", ...]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"expected a list of strings, got {value!r}")
    return list(value)


def _path_of(exc: BaseException, prefix: str) -> str:
    for note in getattr(exc, "__notes__", []):
        name = getattr(note, "name", None)
        if name is not None:
            return f"{prefix}.{name}" if prefix else str(name)
    return prefix


#: Fields of a section that are not keys of its table.
_INTERNAL = ("settings", "base_dir")


def _known_keys(cls: type, unknown: set[str], prefix: str) -> str:
    """What to write instead of a misspelt key: the closest one, else every key there is."""
    import difflib

    known = [f.name for f in attrs.fields(cls) if f.name not in _INTERNAL]
    close = [match for name in sorted(unknown) for match in difflib.get_close_matches(name, known, n=1)]
    if close and len(unknown) == 1:
        return f"did you mean {close[0]}?"
    if not prefix:
        return f"the sections are [{'], ['.join(known)}]"
    extra = " and a [plugins.<name>] table per plugin" if cls is PluginsSection else ""
    return f"the keys there are {', '.join(known)}{extra}"


def _first_problem(exc: BaseException, prefix: str = "") -> str:
    """Walk cattrs' exception tree down to the first leaf and name its key."""
    if isinstance(exc, ForbiddenExtraKeysError):
        keys = ", ".join(sorted(exc.extra_fields))
        where = f"[{prefix}]" if prefix else "the top level"
        return f"unknown key(s) in {where}: {keys}; {_known_keys(exc.cl, exc.extra_fields, prefix)}"
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            return _first_problem(sub, _path_of(sub, prefix))
    if isinstance(exc, ValueError) and len(exc.args) == 4 and isinstance(exc.args[1], attrs.Attribute):
        # attrs.validators.in_: (message, attribute, options, value)
        _, attribute, options, value = exc.args
        key = f"{prefix}.{attribute.name}" if prefix else attribute.name
        return f"{key}: must be one of {', '.join(map(str, options))}; got {value!r}"
    quoted = re.match(r"'(\w+)' must be (.*)", str(exc)) if isinstance(exc, ValueError) else None
    if quoted:  # attrs' own validators: "'name' must be > 0.0: -1.0"
        name, rest = quoted.groups()
        key = f"{prefix}.{name}" if prefix else name
        return f"{key}: must be {rest.replace(': ', ', got ', 1)}"
    if isinstance(exc, ValueError) and ":" in str(exc):
        # our range validators say "field: must be ..."; attrs reports them on the class
        field, _, rest = str(exc).partition(":")
        key = f"{prefix}.{field}" if prefix and not prefix.endswith(field) else (prefix or field)
        return f"{key}:{rest}"
    return f"{prefix or 'config'}: {exc}"


def _overlap(host_a: str, host_b: str) -> bool:
    """Whether listening on both addresses with one port would collide (a wildcard
    address takes the port on every address)."""
    wildcard = ("", "0.0.0.0", "::")
    return host_a == host_b or host_a in wildcard or host_b in wildcard


def check_listeners(config: Config) -> None:
    """Cross-section checks of the listening addresses, which no single key can catch."""
    http, ws, cluster = config.http, config.websocket, config.cluster
    if http.port and http.port == ws.port and _overlap(http.host, ws.host):
        raise ConfigError(
            f"websocket.port: {ws.port} is also http.port; the chat socket needs a port of its own "
            f"(for example {ws.port + 1 if ws.port < 65535 else ws.port - 1})"
        )
    if not cluster.enabled:
        return
    for name, section in (("http", http), ("websocket", ws)):
        if cluster.bind_port and cluster.bind_port == section.port and _overlap(cluster.bind_host, section.host):
            raise ConfigError(
                f"cluster.bind_port: {cluster.bind_port} is also {name}.port; the cluster needs a port of its own"
            )
    if cluster.bind_host in ("0.0.0.0", "::") and not cluster.advertise_host:
        raise ConfigError(
            f"cluster.advertise_host: needed when bind_host is {cluster.bind_host}: "
            "set it to the address other members reach this node at"
        )


def listen_error(section: str, host: str, port: int, exc: OSError) -> ConfigError:
    """One line for a listening socket that could not be bound: which setting, which
    address, and what to do (``section`` is "http", "websocket" or "cluster")."""
    port_key = f"{section}.bind_port" if section == "cluster" else f"{section}.port"
    host_key = f"{section}.bind_host" if section == "cluster" else f"{section}.host"
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return ConfigError(f"{host_key}: {host!r} is not an address of this machine ({exc.strerror})")
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(
            f"{port_key}: {address} is already in use (another node, or another program?); "
            f"stop it or choose another {port_key}"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(
            f"{host_key}: {host} is not an address of this machine; use one of its addresses, or 0.0.0.0 for all"
        )
    if exc.errno == errno.EACCES:
        return ConfigError(
            f"{port_key}: not allowed to listen on {address} (ports below 1024 need privileges); "
            "use a port above 1024 behind a reverse proxy, or grant the node CAP_NET_BIND_SERVICE"
        )
    return ConfigError(f"{port_key}: cannot listen on {address}: {exc.strerror or exc}")


def structure_config(data: dict[str, Any], base_dir: str | Path = ".") -> Config:
    """Turn a parsed TOML mapping into a Config, or raise ConfigError naming the key."""
    data = dict(data)
    plugins = dict(data.get("plugins", {}))
    # [plugins.<name>] tables are plugin sections; they are validated by each plugin at start-up
    settings = {k: plugins.pop(k) for k in list(plugins) if isinstance(plugins[k], dict)}
    if plugins or settings:
        data["plugins"] = {**plugins, "settings": settings}
    data["base_dir"] = str(base_dir)
    try:
        config = make_converter().structure(data, Config)
    except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
        raise ConfigError(_first_problem(exc)) from None
    check_listeners(config)
    check_storage(config)
    check_exposure(config)
    check_limits(config)
    return config


#: Room a `send` frame needs around a message's text (the event's other fields).
FRAME_ROOM = 1024


def check_limits(config: Config) -> None:
    """A message at the size limit must fit in a frame, or no client could ever send it
    (the frame would close the socket with 1009 instead of a `too_large` answer)."""
    limits = config.limits
    if limits.max_message_bytes + FRAME_ROOM > limits.max_frame_bytes:
        raise ConfigError(
            f"limits.max_message_bytes: {limits.max_message_bytes} does not fit in a frame of "
            f"limits.max_frame_bytes = {limits.max_frame_bytes} (a send needs {FRAME_ROOM} bytes more than its "
            f"text); raise max_frame_bytes to at least {limits.max_message_bytes + FRAME_ROOM} or lower "
            "max_message_bytes")


def check_exposure(config: Config) -> None:
    """A node reached through a reverse proxy needs an admin token: without one the admin
    API and /metrics answer loopback clients, and behind a proxy on the same host every
    client looks like one (or would, were the proxy ever trusted by mistake)."""
    if config.admin.token:
        return
    for key, value in (("http.public_url", config.http.public_url), ("websocket.public_url", config.websocket.public_url),
                       ("http.trusted_proxies", config.http.trusted_proxies)):
        if value:
            raise ConfigError(
                f"admin.token: needed when {key} is set (the node is reached through a proxy, and without a "
                f"token the admin API answers whatever looks local); set [admin] token to at least "
                f"{MIN_ADMIN_TOKEN} characters, e.g. the output of `openssl rand -hex 32`"
            )


def check_storage(config: Config) -> None:
    """The storage settings that only make sense together."""
    storage = config.storage
    if storage.engine == "postgresql" and not storage.dsn:
        raise ConfigError('storage.dsn: the postgresql engine needs a connection string, e.g. '
                          '"host=db.example.com dbname=chat user=chat"')
    if config.cluster.enabled and storage.engine != "postgresql":
        raise ConfigError('storage.engine: a cluster keeps its state in PostgreSQL; set engine = "postgresql" '
                          'and storage.dsn, or turn [cluster] off')


def load_config(path: str | Path | None) -> Config:
    """Read a config file; ``None`` means all defaults (data in ./data)."""
    if path is None:
        return structure_config({}, Path.cwd())
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return structure_config(data, path.resolve().parent)
