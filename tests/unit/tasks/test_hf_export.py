"""A stdlib-lm model exported for transformers computes the same logits as prime's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prime.core.errors import TaskError
from prime.tasks.exported import DIR_WEIGHTS, load_model, write_model
from prime.tasks.hf_export import write_transformers_dir

OPTIONS = {"preset": "tiny", "d_model": 32, "n_layers": 2, "n_heads": 4, "seq_len": 32}


def _export(tmp_path, options, task="stdlib-lm"):
    from prime.tasks.registry import resolve_task

    model = resolve_task(task, options, "test").build_model(seed=3)
    card = write_model(tmp_path / DIR_WEIGHTS, model.state_dict(), {"task": task, "task_options": options})
    return model.eval(), card


def _coordinator_dir(tmp_path, model) -> Path:
    """A coordinator data dir whose genesis version is ``model`` (what ``prime registry export`` reads)."""
    from prime.blobs.store import BlobStore
    from prime.coordinator import registry
    from prime.coordinator.status import DB_NAME
    from prime.coordinator.store import CoordinatorStore
    from prime.core import tensors
    from prime.core.identity import Identity

    data_dir = tmp_path / "coord"
    blob = tensors.encode_state(model.state_dict())
    digest = BlobStore(data_dir / "blobs").put_bytes(blob)
    store = CoordinatorStore(data_dir / DB_NAME)
    store.bind_job("lm", Identity.load_or_create(data_dir).public_key)
    store.bind_task("stdlib-lm", OPTIONS, "cd" * 32)
    store.record_genesis(digest, len(blob))
    registry.bind(store.db, {}, registry.Lineage(None, 0, "stdlib-lm", OPTIONS, "fedavg", None, [], {}))
    store.close()
    return data_dir


def test_registry_export_for_transformers_computes_the_same_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    from prime.coordinator import registry
    from prime.coordinator.registry_export import export
    from prime.coordinator.status import open_read_only

    model, _ = _export(tmp_path, OPTIONS)
    data_dir = _coordinator_dir(tmp_path, model)
    _, db = open_read_only(data_dir)
    entry = registry.resolve(registry.versions(db), "latest")
    db.close()
    out = tmp_path / "hf"
    card = export(data_dir, entry, out, "transformers")
    assert card["registry"]["stage"] == "training" and card["task"] == "stdlib-lm"
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([list(b"def f(x):\n    return x + 1\n")])
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    assert torch.equal(load_model(out)(ids), ours)  # prime's loader opens the same directory


def test_other_tasks_and_gelu_are_refused(tmp_path):
    _, card = _export(tmp_path / "gelu", {**OPTIONS, "mlp": "gelu"})
    with pytest.raises(TaskError, match="needs mlp"):
        write_transformers_dir(tmp_path / "gelu", card)
    with pytest.raises(TaskError, match="writes stdlib-lm models"):
        write_transformers_dir(tmp_path, {"task": "digits"})


def test_registry_export_names_files_as_the_loader_does(tmp_path):
    from prime.coordinator import registry_export
    from prime.tasks import exported

    assert registry_export.DIR_WEIGHTS == exported.DIR_WEIGHTS
    assert registry_export.card_path(tmp_path / "m.safetensors") == exported.card_path(tmp_path / "m.safetensors")
