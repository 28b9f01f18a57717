"""A trainer's error-feedback residual (topk) is in its checkpoints and comes back on restart."""

from __future__ import annotations

import torch

from prime import codecs
from prime.core.config import parse_config
from prime.trainer.checkpoint import CheckpointStore
from prime.trainer.node import TrainerNode


class StubEngine:
    shapes = {"w": (6, 4), "b": (4,)}

    def state_dict(self) -> dict:
        return {"model": {"w": torch.zeros(6, 4), "b": torch.zeros(4)}}

    def load_state_dict(self, state: dict) -> None:
        self.loaded = state


def node(tmp_path, update="topk") -> TrainerNode:
    """A node with only what checkpoints touch (no network)."""
    config = parse_config({"compression": {"update": update}})
    n = object.__new__(TrainerNode)
    n.config, n.engine, n.checkpoints = config, StubEngine(), CheckpointStore(tmp_path)
    n.last_submitted_round, n.rounds_trained, n._last_update = 3, 3, None
    n.update_codec = codecs.from_config(config.compression.update)
    n.feedback = codecs.ErrorFeedback(n.update_codec) if n.update_codec.error_feedback else None
    return n


async def test_residual_survives_a_restart(tmp_path):
    first = node(tmp_path)
    parts, residual = first._encode_update({"w": torch.randn(6, 4), "b": torch.randn(4)})
    first.feedback.adopt(residual)
    assert first.feedback.norm() > 0
    await first.save_checkpoint("round-000003")

    restarted = node(tmp_path)
    assert restarted.feedback.residual == {}
    restarted._apply_checkpoint(restarted.checkpoints.load("round-000003"))
    assert set(restarted.feedback.residual) == {"w", "b"}
    assert all(torch.equal(restarted.feedback.residual[k], residual[k]) for k in residual)
    # and the next update is encoded with it: what it sends plus what it keeps is delta + old residual
    d = {"w": torch.randn(6, 4), "b": torch.randn(4)}
    parts, new = restarted._encode_update(d)
    sent = codecs.decode(b"".join(parts), max_bytes=1 << 20)
    assert all(torch.equal(sent[k] + new[k], d[k] + residual[k]) for k in d)


async def test_codecs_without_feedback_keep_no_residual(tmp_path):
    n = node(tmp_path, "int8")
    parts, residual = n._encode_update({"w": torch.randn(6, 4), "b": torch.randn(4)})
    assert n.feedback is None and residual is None
    await n.save_checkpoint("round-000003")
    assert n.checkpoints.load("round-000003")["codec_residual"] == {}
