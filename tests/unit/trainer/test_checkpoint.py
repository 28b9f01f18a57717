"""Trainer checkpoints: verified save/load, pruning of automatic ones, fallback past corruption."""

from __future__ import annotations

import os

import pytest
import torch

from prime.core.errors import TrainerError
from prime.trainer.checkpoint import CheckpointStore, write_atomic


def payload(i: int) -> dict:
    return {"model": {"w": torch.full((3,), float(i))}, "epochs_done": i, "note": f"ckpt {i}", "opt": [1, 2.5, None]}


def assert_payload(state: dict, i: int) -> None:
    assert torch.equal(state["model"]["w"], torch.full((3,), float(i)))
    assert state["epochs_done"] == i and state["note"] == f"ckpt {i}" and state["opt"] == [1, 2.5, None]


def test_save_load_list(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt")
    path = store.save("round-1", payload(1))
    assert path == tmp_path / "ckpt" / "round-1.pt" and path.exists()
    assert (tmp_path / "ckpt" / "round-1.sha256").exists()
    store.save("manual", payload(2))
    assert store.list() == ["round-1", "manual"]
    assert_payload(store.load("round-1"), 1)
    assert_payload(store.load("manual"), 2)
    # no temp files left behind
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.name.endswith(".tmp")]


def test_save_overwrites_same_name(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save("round-1", payload(1))
    store.save("round-1", payload(5))
    assert store.list() == ["round-1"]
    assert_payload(store.load("round-1"), 5)


def test_missing_checkpoint(tmp_path):
    store = CheckpointStore(tmp_path)
    with pytest.raises(TrainerError, match="no checkpoint named 'nope'"):
        store.load("nope")
    assert store.latest_good() is None


def test_pruning_keeps_newest_auto_checkpoints(tmp_path):
    store = CheckpointStore(tmp_path, keep=3)
    store.save("best", payload(0))
    for i in range(1, 8):
        store.save(f"round-{i:06d}", payload(i))
    kept = ["round-000005", "round-000006", "round-000007"]
    assert store.list() == ["best", *kept]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{n}{s}" for n in ("best", *kept) for s in (".pt", ".sha256"))
    assert_payload(store.load("round-000007"), 7)


def test_non_auto_checkpoints_never_pruned(tmp_path):
    store = CheckpointStore(tmp_path, keep=1)
    for i in range(4):
        store.save(f"manual-{i}", payload(i))
    store.save("round-1", payload(1))
    store.save("round-2", payload(2))
    assert store.list() == ["manual-0", "manual-1", "manual-2", "manual-3", "round-2"]


def test_bit_flipped_checkpoint_refused_and_latest_good_falls_back(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save("round-1", payload(1))
    store.save("round-2", payload(2))
    path = tmp_path / "round-2.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(TrainerError, match="corrupt"):
        store.load("round-2")
    name, state = store.latest_good()
    assert name == "round-1"
    assert_payload(state, 1)


def test_truncated_checkpoint_refused_and_latest_good_falls_back(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save("round-1", payload(1))
    store.save("round-2", payload(2))
    path = tmp_path / "round-2.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(TrainerError):
        store.load("round-2")
    assert store.latest_good()[0] == "round-1"


def test_torn_checkpoint_without_digest_is_invisible(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save("round-1", payload(1))
    store.save("round-2", payload(2))
    (tmp_path / "round-2.sha256").unlink()
    assert store.list() == ["round-1"]
    assert store.latest_good()[0] == "round-1"
    with pytest.raises(TrainerError):
        store.load("round-2")


def test_all_corrupt_gives_none(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save("round-1", payload(1))
    (tmp_path / "round-1.sha256").write_text("00" * 32)
    assert store.latest_good() is None


def _plant(tmp_path, name: str, obj) -> None:
    """Write a checkpoint with a *matching* digest whose pickle weights_only refuses."""
    import hashlib
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    (tmp_path / f"{name}.pt").write_bytes(buf.getvalue())
    (tmp_path / f"{name}.sha256").write_text(hashlib.sha256(buf.getvalue()).hexdigest())


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_checkpoint_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _plant(tmp_path, "evil", {"x": _Evil()})
    with pytest.raises(Exception) as info:
        CheckpointStore(tmp_path).load("evil")
    assert not isinstance(info.value, AssertionError)
    assert not (tmp_path / "pwned.txt").exists()


def test_unloadable_checkpoint_is_trainer_error_and_skipped(tmp_path):
    """A checkpoint torch refuses to load (here: one holding a numpy scalar, which torch.save accepts)
    is 'corrupt' per load()'s contract: TrainerError, and latest_good falls back past it."""
    import numpy as np

    store = CheckpointStore(tmp_path)
    store.save("round-000001", payload(1))
    store.save("round-000002", {"loss": np.float64(0.5)})
    with pytest.raises(TrainerError):
        store.load("round-000002")
    assert store.latest_good()[0] == "round-000001"


@pytest.mark.parametrize("name", ["", "../escape", "a/b", "x" * 65, "sp ace", "semi;colon", "\u00e9"])
def test_bad_names_refused(tmp_path, name):
    store = CheckpointStore(tmp_path)
    with pytest.raises(TrainerError, match="checkpoint name"):
        store.save(name, payload(1))
    with pytest.raises(TrainerError, match="checkpoint name"):
        store.load(name)
    assert list(tmp_path.iterdir()) == []


def test_write_atomic(tmp_path):
    target = tmp_path / "f.bin"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
