"""A stdlib-lm model exported for transformers computes the same logits as prime's own."""

from __future__ import annotations

import json

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


def test_transformers_opens_it_and_computes_the_same_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    model, card = _export(tmp_path, OPTIONS)
    write_transformers_dir(tmp_path, card)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([list(b"def f(x):\n    return x + 1\n")])
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    assert torch.equal(load_model(tmp_path)(ids), ours)  # prime's loader opens the same directory


def test_other_tasks_and_gelu_are_refused(tmp_path):
    _, card = _export(tmp_path / "gelu", {**OPTIONS, "mlp": "gelu"})
    with pytest.raises(TaskError, match="needs mlp"):
        write_transformers_dir(tmp_path / "gelu", card)
    with pytest.raises(TaskError, match="writes stdlib-lm models"):
        write_transformers_dir(tmp_path, {"task": "digits"})
