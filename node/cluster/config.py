"""The ``[cluster]`` section of config.toml."""

from __future__ import annotations

import attrs


@attrs.frozen
class ClusterConfig:
    """Gossip membership settings; the cluster is off unless enabled."""

    enabled: bool = False
