"""``chatnode cluster ...``: look at a running node's membership, make cluster keys.

``chatnode cluster members`` asks the node's admin endpoint
(``GET /api/admin/cluster/members``), so it shows exactly what that node believes.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from typing import Any

import httpx

from ..config import Config


def add_cluster_commands(commands: argparse._SubParsersAction) -> None:
    cluster = commands.add_parser("cluster", help="cluster membership")
    sub = cluster.add_subparsers(dest="cluster_command", required=True)
    members = sub.add_parser("members", help="list the members a running node sees")
    members.add_argument("--config", "-c", default="config.toml", help="the node's config.toml")
    members.add_argument("--url", default=None, help="the node's HTTP URL (default: from the config)")
    members.add_argument("--json", action="store_true", help="print the endpoint's JSON")
    members.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the node")
    keygen = sub.add_parser("keygen", help="print a new random cluster key for [cluster] keys")
    keygen.set_defaults(config=None)


def _admin_url(config: Config, override: str | None) -> str:
    if override:
        return override.rstrip("/")
    http = config.http
    if http.public_url:
        return http.public_url.rstrip("/")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(http.host, http.host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{http.port}"


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def format_members(view: dict[str, Any]) -> str:
    """The endpoint's answer as a table, this node marked with ``*``."""
    if not view.get("enabled"):
        return "clustering is off on this node ([cluster] enabled = false)"
    header = ("", "NODE", "NAME", "STATE", "INC", "ADDRESS", "HTTP", "AGE")
    rows = [
        ("*" if m["self"] else "", str(m["node_id"]), m["name"], m["state"], str(m["incarnation"]), m["address"],
         m["http_url"] or "-", _age(m["age_seconds"]))
        for m in view["members"]
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
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


def run_cluster_command(args: argparse.Namespace, config: Config) -> int:
    if args.cluster_command == "keygen":
        print(base64.b64encode(os.urandom(32)).decode())
        return 0
    url = _admin_url(config, args.url) + "/api/admin/cluster/members"
    headers = {"Authorization": f"Bearer {config.admin.token}"} if config.admin.token else {}
    try:
        response = httpx.get(url, headers=headers, timeout=args.timeout)
    except httpx.HTTPError as exc:
        print(f"chatnode: cannot reach the node at {url}: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"chatnode: {url} answered {response.status_code}: {response.text[:200]}", file=sys.stderr)
        return 1
    view = response.json()
    if args.json:
        print(response.text)
    else:
        print(format_members(view))
    return 0
