"""Federated LoRA end to end, real processes on 127.0.0.1: two trainers fine-tune adapters on a
config-built tiny Llama; every committed model version and every accepted update is adapters only
(names and bytes checked against the full model's); held-out loss falls below the base's; the
merged export loads in plain ``transformers``, generates, and scores what the coordinator committed.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prime.blobs.store import BlobStore
from prime.core import tensors
from prime.demo import LocalNetwork
from prime.tasks import task_of
from tests.integration.netutil import wait_for

pytestmark = pytest.mark.slow


def _blobs(net: LocalNetwork, query: str) -> list[dict[str, torch.Tensor]]:
    db = sqlite3.connect(net.coordinator_dir / "coordinator.sqlite")
    try:
        digests = [row[0] for row in db.execute(query)]
    finally:
        db.close()
    store = BlobStore(net.coordinator_dir / "blobs")
    return [tensors.decode_state(bytearray(store.read_bytes(d)), max_bytes=1 << 30) for d in digests]


def test_federated_lora_moves_only_adapters_learns_and_exports_merged(tmp_path):
    net = LocalNetwork(tmp_path / "net", trainers=2, rounds=2, task="hf-causal-lm-lora",
                       federated={"local_steps": 4, "round_timeout": 120.0})
    try:
        net.start_all()
        status = wait_for(net, lambda s: s["rounds_committed"] >= 2 and s, 240, "2 LoRA rounds")
    finally:
        net.stop_all()
    assert status["task"] == "hf-causal-lm-lora" and status["rejected_updates"] == []
    assert all(r["participants"] == 2 for r in status["rounds"])

    task = task_of(net.config)
    model = task.build_model(net.config.training.seed)
    validation = task.load_validation()
    base_loss = task.evaluate(model, validation)["loss"]
    losses = [r["metrics"]["loss"] for r in status["rounds"]]
    assert losses[-1] < base_loss - 0.5, (base_loss, losses)  # 5.5 is a uniform guess over 256 bytes

    adapters = {k: tuple(v.shape) for k, v in task.exchanged_state(model).items()}
    full_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    versions = _blobs(net, "SELECT digest FROM model_versions ORDER BY version")
    updates = _blobs(net, "SELECT digest FROM updates ORDER BY round")
    assert len(versions) == 3 and len(updates) == 4  # genesis + 2 rounds; 2 trainers × 2 rounds
    for state in versions + updates:
        assert {k: tuple(v.shape) for k, v in state.items()} == adapters
        assert all(".lora_A." in k or ".lora_B." in k for k in state)
        assert sum(v.numel() * v.element_size() for v in state.values()) < full_bytes / 4

    out = tmp_path / "merged"
    done = subprocess.run([str(Path(sys.executable).parent / "prime"), "registry", "export", "latest", "--merge-lora",
                           "--data-dir", str(net.coordinator_dir), "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    card = json.loads((out / "prime_card.json").read_text())
    assert card["merged_lora"] and card["round"] == 2 and card["registry"]["stage"] == "training"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    prompt = tokenizer("import email\n", return_tensors="pt").input_ids
    assert prompt[0].tolist() == list(b"import email\n")  # byte-level: ids are the bytes
    generated = merged.generate(prompt, max_new_tokens=16, do_sample=False)
    assert generated.shape[1] == prompt.shape[1] + 16
    assert isinstance(tokenizer.decode(generated[0]), str)
    task.load_exchanged_state(model, versions[-1])  # the base + the committed adapters, unmerged
    assert task.evaluate(model, validation)["loss"] == pytest.approx(losses[-1], rel=1e-5)
    with torch.no_grad():
        logits = merged(input_ids=validation.x[:8].long()).logits.float()
        again = float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), validation.y[:8].long().flatten()))
        unmerged = float(task.loss(model.eval(), validation.x[:8], validation.y[:8]))
    assert again == pytest.approx(unmerged, rel=1e-4)
