"""``prime-trainer`` with a wrong state key: one error on stderr naming the checkpoint, exit 2, and
the data dir exactly as it was (nothing opened on the network, nothing written)."""

from __future__ import annotations

import torch

from prime.core.config import dump_toml, parse_config
from prime.core.identity import Identity
from prime.sealing import Sealer, StateKey, write_key_file
from prime.trainer import cli
from prime.trainer.checkpoint import CheckpointStore


def test_wrong_key_stops_the_trainer_naming_the_file(tmp_path, capsys):
    coordinator = Identity.generate("coordinator")
    job = tmp_path / "job.toml"
    job.write_text(dump_toml(parse_config({"coordinator_key": coordinator.public_key_hex})))
    data_dir = tmp_path / "t1"
    Identity.load_or_create(data_dir, "t1")
    right = StateKey(bytes(range(32)), "right")
    CheckpointStore(data_dir / "checkpoints", sealer=Sealer(right)).save("round-000003", {"w": torch.ones(2)})
    write_key_file(tmp_path / "wrong.key")
    before = {p: p.read_bytes() for p in data_dir.rglob("*") if p.is_file()}

    code = cli.main(["--node-id", "t1", "--config", str(job), "--coordinators", "127.0.0.1:9",
                     "--data-dir", str(data_dir), "--state-key-file", str(tmp_path / "wrong.key"),
                     "--device", "cpu", "--log-level", "error"])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith(f"error: checkpoint {data_dir}/checkpoints/round-000003.pt is sealed with another "
                              "state key"), err
    assert {p: p.read_bytes() for p in data_dir.rglob("*") if p.is_file()} == before
