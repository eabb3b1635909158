"""`chatnode media copy`: move a node's local media into its S3-compatible object store.

A single node keeps media in a directory (`store = "local"`); a cluster needs them in an
object store every node reaches. The operator sets `store = "s3"` and `[plugins.media.s3]`
in the config, runs `chatnode media copy --config config.toml`, and restarts the node.
Media ids, records and messages do not change: the object store uses the same names
(`content/ab/<sha256>`, `thumbs/ab/<sha256>.jpg`).

Every file is checked before and after it is copied:

- a content file's SHA-256 must be its name (a damaged file is reported, not copied);
- after the upload, the object's size must be the file's, and (unless `--quick`) the
  object is read back and its SHA-256 compared with the file's.

The copy is resumable: an object already in the store with the file's size and the
SHA-256 recorded in its metadata (`x-amz-meta-sha256`, set by this command and by the
node itself) is skipped, so running it again after an interruption copies only the rest.
Large files go up in parts (boto3's managed transfer) with bounded memory. The node may
keep running on its local store meanwhile; run the command once more after stopping it to
catch what was uploaded during the first run. Sync: it runs in its own process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .s3store import _errors, _missing, make_client
from .settings import MediaSettings
from .store import CONTENT, THUMBNAIL, content_name, is_sha

READ = 1024 * 1024


def local_files(root: Path) -> Iterator[tuple[str, str, Path]]:
    """(variant, sha256, path) of every content file and thumbnail under a local store."""
    for variant, folder, suffix in ((CONTENT, "content", ""), (THUMBNAIL, "thumbs", ".jpg")):
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.glob("*/*")):
            name = path.name.removesuffix(suffix) if suffix else path.name
            if path.is_file() and is_sha(name) and path.name == name + suffix:
                yield variant, name, path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(READ):
            digest.update(block)
    return digest.hexdigest()


def copy_to_store(settings: MediaSettings, root: Path, *, quick: bool = False,
                  say: Callable[[str], None] = print) -> dict[str, int]:
    """Copy the local store at `root` into the object store of `settings`; counts of files
    copied, skipped (already there), and failed (reported)."""
    from boto3.s3.transfer import TransferConfig

    if settings.store != "s3":
        raise ValueError('[plugins.media] store must be "s3" (with its [plugins.media.s3] section) to copy into it')
    s3 = settings.s3
    client = make_client(s3)
    errors = _errors()
    transfer = TransferConfig(multipart_threshold=s3.part_size, multipart_chunksize=s3.part_size,
                              max_concurrency=2)
    files = list(local_files(root))
    total = sum(path.stat().st_size for _, _, path in files)
    done_bytes = 0
    counts = {"copied": 0, "skipped": 0, "failed": 0}
    say(f"copying {len(files)} files ({total / 1e6:.1f} MB) from {root} to {s3.bucket}/{s3.prefix}")
    for number, (variant, sha, path) in enumerate(files, 1):
        key = s3.prefix + content_name(sha, variant)
        size = path.stat().st_size
        local = file_sha256(path)
        label = f"[{number}/{len(files)}] {content_name(sha, variant)}"
        if variant == CONTENT and local != sha:
            counts["failed"] += 1
            say(f"{label}: FAILED: the file is damaged (its SHA-256 is {local})")
            continue
        try:
            if _already_there(client, s3.bucket, key, size, local, errors):
                counts["skipped"] += 1
                done_bytes += size
                say(f"{label}: already there ({done_bytes / 1e6:.1f} of {total / 1e6:.1f} MB)")
                continue
            extra = {"Metadata": {"sha256": local}}
            if variant == THUMBNAIL:
                extra["ContentType"] = "image/jpeg"
            client.upload_file(str(path), s3.bucket, key, ExtraArgs=extra, Config=transfer)
            problem = _verify(client, s3.bucket, key, size, None if quick else local)
        except errors as exc:
            problem = f"the store failed: {exc}"
        if problem:
            counts["failed"] += 1
            say(f"{label}: FAILED: {problem}")
            continue
        counts["copied"] += 1
        done_bytes += size
        say(f"{label}: copied, {size} bytes, verified ({done_bytes / 1e6:.1f} of {total / 1e6:.1f} MB)")
    client.close()
    say(f"done: {counts['copied']} copied, {counts['skipped']} already there, {counts['failed']} failed")
    return counts


def _already_there(client: Any, bucket: str, key: str, size: int, sha: str, errors: tuple) -> bool:
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except errors as exc:
        if _missing(exc):
            return False
        raise
    return int(head["ContentLength"]) == size and head.get("Metadata", {}).get("sha256") == sha


def _verify(client: Any, bucket: str, key: str, size: int, sha: str | None) -> str | None:
    """What is wrong with the object just uploaded, or None."""
    head = client.head_object(Bucket=bucket, Key=key)
    if int(head["ContentLength"]) != size:
        return f"the store holds {head['ContentLength']} bytes, the file has {size}"
    if sha is None:
        return None
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    while block := body.read(READ):
        digest.update(block)
    body.close()
    if digest.hexdigest() != sha:
        return f"the store's copy has SHA-256 {digest.hexdigest()}"
    return None
