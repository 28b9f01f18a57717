"""Key rotation re-seals a trainer's checkpoints and a coordinator's sealed blobs; a crash at any
step leaves every file readable with one of the two keys, and a second run finishes the job."""

from __future__ import annotations

import shutil

import pytest
import torch

from prime.blobs.store import BlobStore
from prime.coordinator.sealed_state import bind_state_key, recorded_key_id
from prime.coordinator.store import CoordinatorStore
from prime.core import tensors
from prime.core.errors import SealedFileError, StateKeyError
from prime.rotation import SQLITE_MAGIC, rotate_data_dir
from prime.sealing import MAGIC, Sealer, StateKey, sealed_key_id
from prime.state_cli import add_arguments
from prime.trainer.checkpoint import CheckpointStore

OLD = StateKey(bytes(range(32)), "old key")
NEW = StateKey(bytes(range(2, 34)), "new key")
STRANGER = StateKey(bytes(range(5, 37)), "a peer's key")


class Crash(BaseException):
    pass


def make_node(root, key: StateKey | None):
    """One data dir holding both kinds of state: trainer checkpoints and a coordinator's database
    with sealed server-state and snapshot blobs, a model blob and a peer's junk blob."""
    sealer = Sealer(key)
    checkpoints = CheckpointStore(root / "checkpoints", sealer=sealer)
    for i in (1, 2):
        checkpoints.save(f"round-{i:06d}", {"engine": {"w": torch.full((3,), float(i))}, "last_submitted_round": i})
    store = CoordinatorStore(root / "coordinator.sqlite")
    store.bind_job("job", b"\x01" * 32)
    bind_state_key(store, key)
    blobs = BlobStore(root / "blobs")
    for round_number in (1,):
        state = tensors.encode_state({"optimizer.momentum": torch.full((4,), float(round_number))})
        store.db.execute("INSERT INTO server_state VALUES(?, ?)", (round_number, blobs.put_bytes(sealer.seal(state))))
        blobs.put_bytes(sealer.seal(store.snapshot()))
    model = blobs.put_bytes(tensors.encode_state({"w": torch.ones(3)}))
    junk = blobs.put_bytes(Sealer(STRANGER).seal(b"a peer's update that happens to look sealed"))
    store.close()
    return model, junk


def blob_files(root) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (root / "blobs" / "objects").glob("*/*")}


def opens_with(data: bytes, *keys: StateKey) -> StateKey:
    for key in keys:
        try:
            Sealer(key).open(data, "f")
            return key
        except (StateKeyError, SealedFileError):
            continue
    raise AssertionError("opens with neither key")


def check_readable(root, model: str, junk: str) -> StateKey:
    """Every sealed file opens with one of the two keys; the database points at blobs that exist
    and open with the key it records. Returns that key."""
    for path in (root / "checkpoints").glob("*.pt"):
        opens_with(path.read_bytes(), OLD, NEW)
    store = CoordinatorStore(root / "coordinator.sqlite")
    recorded = recorded_key_id(store)
    digests = [d for (d,) in store.db.execute("SELECT digest FROM server_state ORDER BY round")]
    store.close()
    key = {OLD.key_id.hex(): OLD, NEW.key_id.hex(): NEW}[recorded]
    blobs = BlobStore(root / "blobs")
    for digest in digests:
        tensors.decode_state(bytearray(Sealer(key).open(blobs.read_bytes(digest), digest)), max_bytes=1 << 20)
    for digest, data in blob_files(root).items():
        if data.startswith(MAGIC) and digest != junk:
            opens_with(data, OLD, NEW)
    assert blobs.has(model) and blobs.has(junk)
    return key


def kind(step: str) -> str:
    """A step without the blob digest (random nonces make new digests each run)."""
    return step if step.startswith("checkpoint") or step == "database" else step.split()[0]


def test_rotation_reseals_everything_and_removes_the_old(tmp_path):
    model, junk = make_node(tmp_path, OLD)
    report = rotate_data_dir(tmp_path, OLD, NEW)
    assert len(report.resealed) == 2 + 2 and len(report.removed) == 2 and not report.damaged
    assert check_readable(tmp_path, model, junk) is NEW
    for path in (tmp_path / "checkpoints").glob("*.pt"):
        assert sealed_key_id(path.read_bytes()) == NEW.key_id
    sealed = [d for d, data in blob_files(tmp_path).items() if data.startswith(MAGIC) and d != junk]
    assert len(sealed) == 2 and all(sealed_key_id(blob_files(tmp_path)[d]) == NEW.key_id for d in sealed)
    name, state = CheckpointStore(tmp_path / "checkpoints", sealer=Sealer(NEW)).latest_good()
    assert name == "round-000002" and state["last_submitted_round"] == 2
    bind_state_key(CoordinatorStore(tmp_path / "coordinator.sqlite"), NEW)  # the coordinator starts with it


def test_a_crash_at_every_step_leaves_everything_readable_and_a_rerun_finishes(tmp_path):
    """For each durable step of a rotation: a copy of the same node, a run that crashes right after
    that step, the state checked readable, then a second run that finishes."""
    model, junk = make_node(tmp_path / "template", OLD)
    steps: list[str] = []
    rotate_data_dir(shutil.copytree(tmp_path / "template", tmp_path / "full"), OLD, NEW, step=steps.append)
    assert len(steps) == 2 + 2 + 1 + 2  # checkpoints, new blobs, the transaction, old blobs removed
    for crash_at in range(len(steps)):
        node = shutil.copytree(tmp_path / "template", tmp_path / f"crash-{crash_at}")
        taken: list[str] = []

        def step(what: str) -> None:
            taken.append(what)
            if len(taken) == crash_at + 1:
                raise Crash(what)

        with pytest.raises(Crash):
            rotate_data_dir(node, OLD, NEW, step=step)
        assert kind(taken[-1]) == kind(steps[crash_at])
        check_readable(node, model, junk)
        rotate_data_dir(node, OLD, NEW)  # the operator runs it again
        assert check_readable(node, model, junk) is NEW
        assert not [d for d, data in blob_files(node).items()
                    if data.startswith(MAGIC) and sealed_key_id(data) == OLD.key_id]


def test_wrong_old_key_is_one_error_and_changes_nothing(tmp_path):
    make_node(tmp_path, OLD)
    before = (blob_files(tmp_path), {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()})
    with pytest.raises(StateKeyError, match=r"checkpoint .*round-000001\.pt is sealed with key id .*nothing was changed"):
        rotate_data_dir(tmp_path, STRANGER, NEW)
    shutil.rmtree(tmp_path / "checkpoints")  # the coordinator half alone says the same about its database
    with pytest.raises(StateKeyError, match=r"coordinator\.sqlite: .*sealed with key id .*nothing was changed"):
        rotate_data_dir(tmp_path, STRANGER, NEW)
    assert blob_files(tmp_path) == before[0]


def test_first_sealing_of_plaintext_state(tmp_path):
    model, junk = make_node(tmp_path, None)
    report = rotate_data_dir(tmp_path, None, NEW)
    assert len(report.resealed) == 4 and len(report.removed) == 2
    assert not [d for d, data in blob_files(tmp_path).items() if data.startswith(SQLITE_MAGIC)]
    assert check_readable(tmp_path, model, junk) is NEW


def test_cli_keygen_and_rotate(tmp_path, capsys):
    import argparse
    import json

    make_node(tmp_path / "node", None)
    from prime.core.identity import Identity

    node_key = Identity.load_or_create(tmp_path / "node").public_key  # the rotation is signed into its audit log
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for argv in (["keygen", "--out", str(tmp_path / "a.key")],
                 ["rotate-key", "--data-dir", str(tmp_path / "node"), "--new-key-file", str(tmp_path / "a.key")]):
        args = parser.parse_args(argv)
        assert args.func(args) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert out[1]["old_key_id"] is None and out[1]["new_key_id"] == out[0]["key_id"] and out[1]["resealed"] == 4
    from prime.audit import verify_log

    audited = [json.loads(line) for line in (tmp_path / "node" / "audit.jsonl").read_text().splitlines()]
    assert [(a["event"], a["fields"]["new_key_id"]) for a in audited] == [("key_rotation", out[0]["key_id"])]
    assert verify_log(tmp_path / "node", node_key).ok
    args = parser.parse_args(["rotate-key", "--data-dir", str(tmp_path / "node"), "--new-key-file",
                              str(tmp_path / "missing.key")])
    assert args.func(args) == 2 and "does not exist" in capsys.readouterr().err
