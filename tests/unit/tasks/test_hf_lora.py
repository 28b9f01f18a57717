"""The hf-causal-lm-lora task: options and their errors, the pinned base, only adapters exchanged,
FFA-LoRA's exact averaging, a wrong-rank update refused, one engine round, and the merged export."""

from __future__ import annotations

import json

import pytest
import torch

from prime.coordinator.verification import check_tensors
from prime.core.config import parse_config
from prime.core.errors import ConfigError, TaskError, UpdateRejected
from prime.tasks import hf_base
from prime.tasks.hf_lora import DEMO_OPTIONS, LoraOptions
from prime.tasks.registry import resolve_task
from prime.tasks.spec import Shard

NAME = "hf-causal-lm-lora"
DATA = {"stdlib_modules": ["json"], "seq_len": 32, "validation_sequences": 8}


def lora(**options):
    return resolve_task(NAME, {"base_preset": "tiny-llama", **DATA, **options}, "job.toml")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny Llama saved as a transformers directory, and its digest."""
    path = tmp_path_factory.mktemp("base")
    model = hf_base.build_preset("tiny-llama", seed=3)
    model.save_pretrained(str(path), safe_serialization=True)
    return path, hf_base.weights_digest(model)


@pytest.mark.parametrize("bad, key", [({}, "base_path"), ({"base_preset": "tiny-llama", "base_path": "x"}, "base_path"),
                                      ({"base_preset": "tiny-llama", "r": 0}, "task.options.r"),
                                      ({"base_preset": "tiny-llama", "bias": "some"}, "task.options.bias"),
                                      ({"base_preset": "tiny-llama", "base_digest": "abc"}, "base_digest"),
                                      ({"base_preset": "tiny-llama", "rank": 4}, "unknown key 'task.options.rank'")])
def test_bad_options_name_the_key_and_file(bad, key):
    with pytest.raises(ConfigError) as err:
        resolve_task(NAME, bad, "job.toml")
    assert key in str(err.value) and "job.toml" in str(err.value)


def test_a_target_module_that_matches_nothing_lists_the_models_module_names():
    with pytest.raises(ConfigError) as err:
        lora(target_modules=["q_proj", "query"]).build_model(0)
    message = str(err.value)
    assert "task.options.target_modules" in message and "['query']" in message
    assert all(name in message for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "lm_head"))


def test_a_base_directory_missing_a_file_names_it(base_dir, tmp_path):
    path, digest = base_dir
    for missing in ("config.json", "model.safetensors"):
        broken = tmp_path / missing
        broken.mkdir()
        for f in path.iterdir():
            if f.name != missing:
                (broken / f.name).write_bytes(f.read_bytes())
        with pytest.raises(TaskError, match=missing.replace(".", r"\.")):
            resolve_task(NAME, {"base_path": str(broken), "base_digest": digest, **DATA}).build_model(0)
    (tmp_path / "sharded").mkdir()
    (tmp_path / "sharded" / "config.json").write_text("{}")
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(TaskError, match="missing model-00001-of-00002.safetensors"):
        resolve_task(NAME, {"base_path": str(tmp_path / "sharded"), **DATA}).build_model(0)


def test_the_base_is_pinned_and_a_differing_one_is_refused_naming_both_digests(base_dir, tmp_path):
    path, digest = base_dir
    with pytest.raises(TaskError, match=f"base_digest is not set.*{digest}"):
        resolve_task(NAME, {"base_path": str(path), **DATA}).build_model(0)
    model = resolve_task(NAME, {"base_path": str(path), "base_digest": digest, **DATA}).build_model(0)
    # r=8 on q (64→64) and v (64→32) of 2 layers: 2 × (8·64 + 64·8 + 8·64 + 32·8)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 3584
    other = hf_base.build_preset("tiny-llama", seed=3)
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight[0, 0] += 1.0  # one weight differs on this machine
    other.save_pretrained(str(tmp_path / "other"), safe_serialization=True)
    theirs = hf_base.weights_digest(other)
    with pytest.raises(TaskError) as err:
        resolve_task(NAME, {"base_path": str(tmp_path / "other"), "base_digest": digest, **DATA}).build_model(0)
    assert digest in str(err.value) and theirs in str(err.value) and "refusing" in str(err.value)


def test_only_adapters_are_exchanged_and_load_back():
    task = lora()
    model = task.build_model(0)
    state = task.exchanged_state(model)
    assert state and all(".lora_A." in k or ".lora_B." in k for k in state)
    assert not any(".default." in k for k in state)  # peft's saved names
    fresh = {k: torch.randn_like(v) for k, v in state.items()}
    task.load_exchanged_state(model, fresh)
    assert all(torch.equal(task.exchanged_state(model)[k], v) for k, v in fresh.items())
    with pytest.raises(TaskError, match="missing"):
        task.load_exchanged_state(model, dict(list(fresh.items())[1:]))
    ffa = lora(freeze_a=True)
    kept = ffa.exchanged_state(ffa.build_model(0))
    assert kept and all(".lora_B." in k for k in kept) and len(kept) == len(state) // 2


def test_a_wrong_rank_or_module_set_is_refused():
    reference = lora(r=8).exchanged_state(lora(r=8).build_model(0))
    wrong_rank = lora(r=4).exchanged_state(lora(r=4).build_model(0))
    with pytest.raises(UpdateRejected) as err:
        check_tensors(wrong_rank, reference)
    assert err.value.reason == "wrong_shape"
    other_modules = lora(target_modules=["q_proj", "k_proj"]).exchanged_state(
        lora(target_modules=["q_proj", "k_proj"]).build_model(0))
    with pytest.raises(UpdateRejected) as err:
        check_tensors(other_modules, reference)
    assert err.value.reason == "wrong_tensors"  # another set of tensors: the intake's reason for that


def test_ffa_lora_averages_exactly_and_plain_lora_does_not():
    """mean(B_i)·A = mean(B_i·A) when A is frozen and shared; mean(B_i)·mean(A_i) ≠ mean(B_i·A_i)."""
    torch.manual_seed(0)
    a = torch.randn(4, 16)
    b1, b2 = torch.randn(16, 4), torch.randn(16, 4)
    assert torch.allclose((b1 + b2) / 2 @ a, (b1 @ a + b2 @ a) / 2, atol=1e-5)
    a1, a2 = torch.randn(4, 16), torch.randn(4, 16)
    assert not torch.allclose((b1 + b2) / 2 @ ((a1 + a2) / 2), (b1 @ a1 + b2 @ a2) / 2, atol=1e-2)
    # And the task really keeps A where it was built: the same on every participant, never trained.
    task = lora(freeze_a=True)
    one, two = task.build_model(0), task.build_model(0)
    a_one = {k: v for k, v in one.state_dict().items() if ".lora_A." in k}
    assert a_one and all(torch.equal(v, two.state_dict()[k]) for k, v in a_one.items())
    assert not any(p.requires_grad for n, p in one.named_parameters() if ".lora_A." in n)


def test_one_engine_round_trains_and_sends_adapters_only():
    from prime.trainer.engine import LocalEngine, LocalWork

    options = {"base_preset": "tiny-llama", **DATA}
    config = parse_config({"task": {"name": NAME, "options": options},
                           "training": {"batch_size": 8, "learning_rate": 1e-2, "gradient_clipping": 1.0,
                                        "optimizer": {"name": "adamw"}}}, "job.toml")
    task = resolve_task(NAME, options)
    engine = LocalEngine(task, config.training, device=torch.device("cpu"))
    engine.use_shard(0, 2)
    start = {k: v.clone() for k, v in task.exchanged_state(task.build_model(0)).items()}
    def full(t):
        return t.full_tensor() if hasattr(t, "full_tensor") else t

    base_before = {k: full(v).clone() for k, v in engine.model.state_dict().items() if "lora_" not in k}
    delta, metrics = engine.train(start, LocalWork(steps=3))
    assert set(delta) == set(start) and metrics.steps == 3
    assert any(float(d.abs().max()) > 0 for d in delta.values())
    after = engine.model.state_dict()
    assert all(torch.equal(full(after[k]), v) for k, v in base_before.items())  # the base is frozen
    engine.close()


def test_data_is_split_by_document_and_held_out():
    task = lora()
    shards = [task.load_shard(Shard(i, 2)) for i in range(2)]
    validation = task.load_validation()
    assert all(len(s) > 0 for s in shards) and 0 < len(validation) <= 8
    assert shards[0].x.dtype == torch.uint8 and shards[0].x.shape[1] == 32
    assert DEMO_OPTIONS["base_preset"] == "tiny-llama" and LoraOptions(**DEMO_OPTIONS).r == 8
