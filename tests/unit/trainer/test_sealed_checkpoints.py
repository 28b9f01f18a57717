"""Sealed trainer checkpoints: no plaintext on disk, damage skipped and counted, a wrong key stops."""

from __future__ import annotations

import pytest
import torch

from prime.core.errors import StateKeyError, TrainerError
from prime.sealing import HEADER_BYTES, MAGIC, Sealer, StateKey
from prime.trainer.checkpoint import CheckpointStore

KEY = StateKey(bytes(range(32)), "test key")
OTHER = StateKey(bytes(range(1, 33)), "other key")


def payload(i: int) -> dict:
    return {"engine": {"model": {"layer.weight": torch.full((4, 4), float(i))}}, "last_submitted_round": i}


def files(root) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.iterdir())}


def test_sealed_checkpoints_hold_no_plaintext(tmp_path):
    store = CheckpointStore(tmp_path, sealer=Sealer(KEY))
    store.save("round-000001", payload(1))
    raw = (tmp_path / "round-000001.pt").read_bytes()
    assert raw.startswith(MAGIC)
    for marker in (b"PK\x03\x04", b"data.pkl", b"layer.weight", b"last_submitted_round"):
        assert marker not in raw  # torch's zip container, its pickle, tensor and key names
    name, state = store.latest_good()
    assert name == "round-000001" and torch.equal(state["engine"]["model"]["layer.weight"], torch.full((4, 4), 1.0))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_newest_is_skipped_for_the_previous_and_counted(tmp_path, damage):
    store = CheckpointStore(tmp_path, sealer=Sealer(KEY))
    store.save("round-000001", payload(1))
    store.save("round-000002", payload(2))
    path = tmp_path / "round-000002.pt"
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[HEADER_BYTES + 100] ^= 0x40
    else:
        raw = raw[: len(raw) // 2]
    path.write_bytes(bytes(raw))
    store.check_key()  # damage is not a key problem
    with pytest.raises(TrainerError, match=r"round-000002\.pt.*(MAC|truncated)"):
        store.load("round-000002")
    name, state = store.latest_good()
    assert name == "round-000001" and state["last_submitted_round"] == 1
    assert store.metrics()["mac_failures"] == 2 and store.metrics()["checkpoints_skipped"] == 1


@pytest.mark.parametrize("writer,reader,message", [
    (KEY, OTHER, "is sealed with another state key"),
    (KEY, None, "is sealed, but no state key is set"),
    (None, KEY, "is not sealed, but a state key is set"),
])
def test_key_mismatch_is_one_error_naming_the_file_and_changes_nothing(tmp_path, writer, reader, message):
    writing = CheckpointStore(tmp_path, sealer=Sealer(writer))
    writing.save("round-000001", payload(1))
    writing.save("round-000002", payload(2))
    before = files(tmp_path)
    reading = CheckpointStore(tmp_path, sealer=Sealer(reader))
    with pytest.raises(StateKeyError, match=rf"checkpoint {tmp_path}/round-000002\.pt {message}"):
        reading.check_key()
    with pytest.raises(StateKeyError, match=message):
        reading.latest_good()  # never falls back to an older checkpoint or to nothing
    assert files(tmp_path) == before
