"""``chatnode cluster ...``: look at a running cluster through one node, make cluster keys.

``chatnode cluster members`` asks the node's admin endpoint
(``GET /api/admin/cluster/members``): the membership that node believes in, and what each
live member answered it about itself within the timeout (node/cluster/status.py).
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from typing import IO, Any

import httpx

from ..admin_cli import TOKEN_ENV, TOKEN_HINT, CliError, admin_token, node_url
from ..config import Config


def add_cluster_commands(commands: argparse._SubParsersAction) -> None:
    cluster = commands.add_parser("cluster", help="cluster membership")
    sub = cluster.add_subparsers(dest="cluster_command", required=True)
    members = sub.add_parser("members", help="the members a running node sees, and what each reports")
    members.add_argument("--config", "-c", default=argparse.SUPPRESS,
                         help="the node's config.toml (default: config.toml, if there is one)")
    members.add_argument("--url", default=None, help="the node's HTTP URL (default: from the config)")
    members.add_argument("--token", default=None,
                         help=f"the admin token (default: ${TOKEN_ENV}, else the config's [admin] token)")
    members.add_argument("--json", action="store_true", help="print the endpoint's JSON")
    members.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the node")
    members.add_argument("--peer-timeout", type=_peer_timeout, default=2.0,
                         help="seconds the node waits for its peers' answers (0.001 to 30)")
    members.add_argument("--no-expected", action="store_true",
                         help="leave out the chats each member should own (saves reading every chat id)")
    keygen = sub.add_parser("keygen", help="print a new random cluster key for [cluster] keys")
    keygen.set_defaults(config=None)


def _peer_timeout(text: str) -> float:
    """What the endpoint's ``timeout_ms`` takes (1 to 30,000 ms), in seconds."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.001 <= seconds <= 30:
        raise argparse.ArgumentTypeError(f"must be 0.001 to 30 seconds, not {text}")
    return seconds


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _number(member: dict[str, Any], key: str) -> str:
    """A figure the member reported: '?' when it did not answer, '-' when not asked."""
    value = member.get(key)
    if value is not None:
        return str(value)
    return "?" if member.get("reply") == "no answer" else "-"


def _rtt(member: dict[str, Any]) -> str:
    if member.get("reply") == "no answer":
        return "no answer"
    rtt = member.get("rtt_ms")
    return "-" if rtt is None else f"{rtt:.1f}ms"


def _link(member: dict[str, Any], key: str) -> str:
    link = member.get("link")
    return "-" if not link else str(link[key])


def format_members(view: dict[str, Any]) -> str:
    """The endpoint's answer as a table, this node marked with ``*``: each member's state,
    the chats it sequences (CHATS) and should own (OWN), its connected devices, this
    node's link to it (QUEUE, FLIGHT) and the round trip of its answer (RTT)."""
    if not view.get("enabled"):
        return "clustering is off on this node ([cluster] enabled = false)"
    header = ("", "NODE", "NAME", "STATE", "INC", "ADDRESS", "CHATS", "OWN", "DEVICES", "QUEUE", "FLIGHT", "RTT",
              "AGE")
    rows = [
        ("*" if m["self"] else "", str(m["node_id"]), m["name"], m["state"], str(m["incarnation"]), m["address"],
         _number(m, "chats_sequenced"), str(m.get("chats_expected", "-")), _number(m, "devices"),
         _link(m, "queued"), _link(m, "in_flight"), _rtt(m), _age(m["age_seconds"]))
        for m in view["members"]
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    ownership = view.get("ownership") or {}
    if ownership.get("chats") is not None:
        lines.append(f"{ownership['chats']} chats stored; OWN by this node's view of the live members "
                     f"{', '.join(map(str, ownership['members']))}")
    stats = view.get("statistics", {})
    lines.append(
        f"probes {stats.get('probes', 0)}, suspicions {stats.get('suspicions', 0)}, "
        f"failures {stats.get('failures', 0)}, refutations {stats.get('refutations', 0)}, "
        f"dropped packets {stats.get('dropped_packets', 0)}, local health {stats.get('awareness', 0)}"
    )
    return "\n".join(lines)


def start_error_message(group: BaseExceptionGroup) -> str | None:
    """The message of a ClusterStartError inside ``group`` (as trio nests it), if there is one."""
    from .service import ClusterStartError

    found, _rest = group.split(ClusterStartError)
    if found is None:
        return None
    leaf: BaseException = found
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return f"cluster: {leaf}"


def run_cluster_command(args: argparse.Namespace, config: Config, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    if args.cluster_command == "keygen":
        print(base64.b64encode(os.urandom(32)).decode(), file=out)
        return 0
    try:  # where the node listens, as for `chatnode admin`
        url = (args.url.rstrip("/") if args.url else node_url(config)) + "/api/admin/cluster/members"
    except CliError as exc:
        print(f"chatnode: {exc}", file=sys.stderr)
        return exc.exit_code
    token = admin_token(args.token, config)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    params = {"timeout_ms": str(round(args.peer_timeout * 1000))}
    if args.no_expected:
        params["expected"] = "0"
    try:
        response = httpx.get(url, headers=headers, params=params, timeout=args.timeout + args.peer_timeout)
    except httpx.HTTPError as exc:
        print(f"chatnode: cannot reach the node at {url}: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        hint = f"; {TOKEN_HINT}" if response.status_code in (401, 403) else ""
        print(f"chatnode: {url} answered {response.status_code}: {response.text[:200]}{hint}", file=sys.stderr)
        return 1
    view = response.json()
    if args.json:
        print(response.text, file=out)
    else:
        print(format_members(view), file=out)
    return 0
