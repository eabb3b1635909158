"""`chatnode backup` and `chatnode restore` (node/backup.py), as real processes, against a
real node on both engines: a backup taken while senders keep sending restores every
message acknowledged before it began (and, per chat, a gap-free prefix of the log), the
uploads and the keys; a damaged or incomplete backup, a running node's data and data
already in place are refused."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import trio
from conftest import make_config, new_user, running_node, storage_toml
from PIL import Image

from node.client import ChatClient
from node.testing import wait_until

CHATNODE = [sys.executable, "-m", "node"]


def write_config(tmp_path: Path, name: str) -> Path:
    """A config.toml for the command, naming the same data as `make_config(tmp_path)`."""
    data_dir = tmp_path / "data"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[node]\ndata_dir = "{data_dir}"\n{storage_toml(data_dir)}')
    return path


async def chatnode(*args: str | Path, check: bool = True) -> trio.CompletedProcess:
    done = await trio.run_process([*CHATNODE, *map(str, args)], capture_stdout=True, capture_stderr=True,
                                  check=False)
    if check:
        assert done.returncode == 0, done.stderr.decode()
    return done


def jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (seed * 70 % 256, 80, 160)).save(out, "JPEG")
    return out.getvalue()


async def test_a_backup_taken_under_load_restores_every_acknowledged_message(tmp_path):
    source = tmp_path / "source"
    backup_dir = tmp_path / "backup"
    config = make_config(source)
    acked: dict[str, dict[int, dict]] = {}  # chat -> seq -> ack (with the text sent)
    async with running_node(config) as node:
        pairs = []
        for i in range(3):
            sender, receiver = await new_user(node, f"sender{i}"), await new_user(node, f"receiver{i}")
            chat = await sender.open_direct(username=f"receiver{i}")
            pairs.append((sender, receiver, chat["id"]))
            acked[chat["id"]] = {}
        photos = {}
        first = pairs[0][0]
        vapid_before = await first.request("GET", "/api/push/vapid")
        for n in range(3):
            media = await first.upload(jpeg(n), name=f"photo{n}.jpg")
            photos[media["id"]] = await first.download(media["id"])  # (as stored: the node strips metadata)
        async with first.connect() as conn:
            for media_id in photos:
                await conn.send_many([{"chat": pairs[0][2], "kind": "image", "media": media_id, "text": None}])

        stop = trio.Event()
        before_backup: list[tuple[str, int]] = []

        async def keep_sending(sender: ChatClient, chat_id: str) -> None:
            async with sender.connect() as conn:
                n = 0
                while not stop.is_set():
                    texts = [f"{chat_id[-4:]} message {n + k}" for k in range(10)]
                    acks = await conn.send_many([{"chat": chat_id, "text": t} for t in texts])
                    for ack, text in zip(acks, texts):
                        acked[chat_id][ack["seq"]] = {**ack, "text": text}
                    n += 10

        async with trio.open_nursery() as senders:
            for sender, _, chat_id in pairs:
                senders.start_soon(keep_sending, sender, chat_id)
            await wait_until(lambda: sum(map(len, acked.values())) >= 300, 30)  # load before the backup starts
            before_backup = [(c, s) for c, seqs in acked.items() for s in list(seqs)]
            done = await chatnode("backup", backup_dir, "--config", write_config(source, "backup"))
            during = sum(map(len, acked.values())) - len(before_backup)
            stop.set()
        assert during > 0, "the senders kept sending while the backup ran"
        assert b"verify" in done.stderr and b"counts match" in done.stderr
        for client in [c for pair in pairs for c in pair[:2]]:
            await client.aclose()

    manifest = json.loads((backup_dir / "manifest.json").read_text())
    assert manifest["media"]["uploads"] == 3 and manifest["media"]["missing"] == []
    assert sum(1 for name in manifest["files"] if name.startswith("media/content/")) == 3
    assert oct((backup_dir).stat().st_mode & 0o777) == "0o700"

    target = tmp_path / "target"
    await chatnode("restore", backup_dir, "--config", write_config(target, "restore"))
    async with running_node(make_config(target)) as node:
        for i, (_, _, chat_id) in enumerate(pairs):
            async with ChatClient(node.http_url) as receiver:
                await receiver.login(f"receiver{i}", "correct horse battery")
                history = await receiver.whole_history(chat_id)
                seqs = [m["seq"] for m in history]
                assert seqs == list(range(1, len(seqs) + 1)), "the restored log has no gap"
                restored = {m["seq"]: m for m in history}
                for seq, ack in acked[chat_id].items():  # a prefix of the log, as of one instant
                    if seq <= seqs[-1]:
                        assert restored[seq]["id"] == ack["id"] and restored[seq]["text"] == ack["text"]
                for chat, seq in before_backup:
                    if chat == chat_id:
                        assert seq in restored, f"acknowledged before the backup, message {seq} is missing"
                if i == 0:
                    async with ChatClient(node.http_url) as sender:
                        await sender.login("sender0", "correct horse battery")
                        for media_id, data in photos.items():
                            assert await sender.download(media_id) == data
                        # the keys are records in the database: browsers' subscriptions still hold
                        assert await sender.request("GET", "/api/push/vapid") == vapid_before


async def test_restore_refuses_damaged_incomplete_or_misplaced_backups(tmp_path, storage_engine):
    source = tmp_path / "source"
    config = make_config(source)
    async with running_node(config) as node:
        alice = await new_user(node, "alice")
        await alice.upload(jpeg(7), name="seven.jpg")
        await alice.aclose()
    backup_dir = tmp_path / "backup"
    source_toml = write_config(source, "source")
    await chatnode("backup", backup_dir, "--config", source_toml)

    done = await chatnode("backup", backup_dir, "--config", source_toml, check=False)
    assert done.returncode == 1 and b"not empty" in done.stderr

    # data in place (the source itself): refused without --force
    done = await chatnode("restore", backup_dir, "--config", source_toml, check=False)
    assert done.returncode == 1
    assert (b"--force" if storage_engine == "lmdb" else b"not empty") in done.stderr

    # a damaged file: refused before anything is put in place
    target_toml = write_config(tmp_path / "target", "target")
    manifest = json.loads((backup_dir / "manifest.json").read_text())
    database = backup_dir / manifest["database"]
    raw = bytearray(database.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    database.write_bytes(bytes(raw))
    done = await chatnode("restore", backup_dir, "--config", target_toml, check=False)
    assert done.returncode == 1 and b"damaged" in done.stderr
    assert not (tmp_path / "target" / "data" / "db").exists()
    raw[len(raw) // 2] ^= 0xFF
    database.write_bytes(bytes(raw))

    # an unfinished backup (no manifest)
    (backup_dir / "manifest.json").rename(backup_dir / "manifest.json.away")
    done = await chatnode("restore", backup_dir, "--config", target_toml, check=False)
    assert done.returncode == 1 and b"did not finish" in done.stderr
    (backup_dir / "manifest.json.away").rename(backup_dir / "manifest.json")

    # a newer schema than this chatnode knows
    newer = {**manifest, "schema_version": 999}
    (backup_dir / "manifest.json").write_text(json.dumps(newer))
    done = await chatnode("restore", backup_dir, "--config", target_toml, check=False)
    assert done.returncode == 1 and b"newer than this chatnode" in done.stderr
    (backup_dir / "manifest.json").write_text(json.dumps(manifest))

    # a running node's data
    async with running_node(make_config(tmp_path / "target")) as node:
        if storage_engine == "lmdb":
            from node import preflight

            lock = preflight.prepare_data_dir(node.config)  # as chatnode serve holds it
        try:
            done = await chatnode("restore", backup_dir, "--config", target_toml, check=False)
        finally:
            if storage_engine == "lmdb":
                lock.close()
        assert done.returncode == 1
        assert (b"in use by a running node" if storage_engine == "lmdb" else b"nodes are connected") in done.stderr

    if storage_engine == "lmdb":  # with --force, what was there is moved aside
        done = await chatnode("restore", backup_dir, "--config", target_toml, "--force")
        assert list((tmp_path / "target" / "data").glob("db.before-restore-*"))
        async with running_node(make_config(tmp_path / "target")) as node:
            async with ChatClient(node.http_url) as alice:
                await alice.login("alice", "correct horse battery")
