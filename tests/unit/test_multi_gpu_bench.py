"""benchmarks/multi_gpu.py's arithmetic and the update path its ``--pipeline`` runs, in one process.

(The torchrun runs themselves are the benchmark's CPU smoke run and the GPU runs in RESULTS.md.)"""

from __future__ import annotations

import pytest
import torch

from benchmarks.multi_gpu import summarize
from benchmarks.multi_gpu_worker import job, pipeline_config, update_pipeline
from prime.core.errors import UpdateRejected
from prime.core.identity import Identity
from prime.demo import LocalNetwork


def run(ranks: int, tokens_per_s: float, step_s: float, gather_s: float) -> dict:
    return {"ranks": ranks, "tokens_per_s": tokens_per_s, "step_s": step_s, "load_s": 1.0, "gather_s": gather_s,
            "flops_per_token": 1e10}


def test_scaling_is_per_gpu_against_one_gpu_of_the_same_run():
    one, eight = summarize([run(1, 1000.0, 0.5, 3.0), run(8, 7200.0, 0.55, 4.0)], local_steps=100, peak_flops=1e13)
    assert one["scaling_vs_1"] == 1.0 and one["tokens_per_s_per_gpu"] == 1000.0
    assert eight["tokens_per_s_per_gpu"] == 900.0 and eight["scaling_vs_1"] == pytest.approx(0.9)
    assert eight["mfu"] == pytest.approx(900.0 * 1e10 / 1e13)
    # a round of H = 100 steps, extrapolated: 100 x 0.55 + load 1 + gather 4 = 60 s, the gather 1/15 of it
    assert eight["round_s_extrapolated"] == pytest.approx(60.0)
    assert eight["gather_share"] == pytest.approx(4.0 / 60.0)


def test_without_one_gpu_there_is_no_ratio():
    (row,) = summarize([run(2, 1000.0, 0.5, 1.0)], local_steps=10)
    assert row["scaling_vs_1"] is None and row["tokens_per_s_per_gpu"] == 500.0


def test_weak_scaling_keeps_the_batch_per_gpu():
    assert job("tiny", None, 8, 4)["training"]["batch_size"] == 32


def state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(64, 32, generator=g), "b.bias": torch.randn(300, generator=g)}


@pytest.mark.parametrize("codec", ["int8", "fp32"])
def test_a_delta_goes_through_the_coordinators_checks(tmp_path, codec):
    identity = Identity.generate()
    config = pipeline_config(job("tiny", None, 4, 2), codec, identity.public_key_hex, 1 << 20)
    delta = {k: v * 1e-3 for k, v in state(1).items()}
    out = update_pipeline(delta, state(), config, identity, tmp_path, num_samples=8, devices=2, kind="cpu", peak=1)
    assert out["accepted"] and out["fp32_bytes"] == 4 * (64 * 32 + 300)
    assert set(out["seconds"]) == {"encode", "digest+store", "sign", "verify_signature", "check_record",
                                   "read+verify_digest", "decode", "check_tensors"}
    if codec == "int8":
        assert out["blob_bytes"] < out["fp32_bytes"] / 3 and 0 < out["relative_error"] < 0.01
    else:
        assert out["relative_error"] == 0.0


def test_the_pipeline_refuses_what_the_intake_refuses(tmp_path):
    identity = Identity.generate()
    config = pipeline_config(job("tiny", None, 4, 1), "int8", identity.public_key_hex, 1 << 20)
    delta = state(1)
    delta["b.bias"][3] = float("nan")
    with pytest.raises(UpdateRejected, match="NaN"):
        update_pipeline(delta, state(), config, identity, tmp_path, num_samples=8, devices=1, kind="cpu", peak=1)


def test_local_network_can_launch_one_rank_under_torchrun(tmp_path, monkeypatch):
    net = LocalNetwork(tmp_path, trainers=1, rounds=1)
    spawned = []
    monkeypatch.setattr(net, "_spawn", lambda name, *args: spawned.append(args))
    net.start_trainer(0)
    net.start_trainer(0, torchrun=True)
    plain, launched = spawned
    assert plain[:2] == ("-m", "prime.trainer.cli")
    assert launched[:4] == ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1")
