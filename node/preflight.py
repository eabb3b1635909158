"""What `chatnode serve` and `chatnode check-config` verify before a node binds a port.

Every mistake an operator can make in a config or on the host should stop start-up with
one line that names the setting and says what to do, never a traceback. Config-only
checks live in node/config.py, plugin sections in node/plugin_manager.py; this module
adds what needs the host: the data directory, checked by both commands (so check-config
rejects whatever serve would reject before binding) and locked by serve.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import IO

from .config import Config, ConfigError
from .storage.liveness import open_lock_file


def check_data_dir(config: Config) -> None:
    """Raise ConfigError if `serve` could not create or write the data directory; what
    this creates to find out, it removes."""
    _probe_data_dir(config.data_dir, keep=False)


def prepare_data_dir(config: Config) -> IO[str]:
    """Create the data directory if needed and take the node's lock on it.

    Two nodes on one data directory would each run a sequencer over the same LMDB
    environment (LMDB itself allows several processes): the second one is refused. The
    lock is held while the returned file stays open, so for the life of the process.
    """
    path = config.data_dir
    _probe_data_dir(path, keep=True)
    lock = open_lock_file(path)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise ConfigError(
            f"node.data_dir: {path} is in use by another running node (pid {holder}); "
            "stop it, or give this node a data_dir of its own"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _probe_data_dir(path: Path, *, keep: bool) -> None:
    """Make sure the node can create and write `path` by doing it: permission bits do
    not tell (root, read-only mounts, ACLs). With keep=False, directories this made are
    removed again."""
    user = _user()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"node.data_dir: {path} exists and is not a directory; point node.data_dir at a directory")
    created = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    try:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new data dir is the node's alone
        except OSError as exc:
            raise ConfigError(
                f"node.data_dir: cannot create {path} ({exc.strerror}); create it, writable by {user}, "
                "or point node.data_dir elsewhere"
            ) from None
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as exc:
            raise ConfigError(
                f"node.data_dir: {path} is not writable by {user} ({exc.strerror}); "
                "give it to that user (chown) or point node.data_dir elsewhere"
            ) from None
    finally:
        if not keep:
            for made in created:
                try:
                    made.rmdir()
                except OSError:
                    break


def _user() -> str:
    try:
        import pwd

        return f"user {pwd.getpwuid(os.geteuid()).pw_name}"
    except (ImportError, KeyError):
        return f"uid {os.geteuid()}"
