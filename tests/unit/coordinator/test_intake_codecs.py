"""The intake and codecs: a record naming a codec the job does not use is refused as ``wrong_codec``
(not penalized); a blob is decoded with the job's codec; a streaming strategy folds it encoded."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
import torch

from prime import codecs
from prime.blobs.store import BlobStore
from prime.coordinator.intake import UpdateIntake
from prime.coordinator.rounds import RoundCollector
from prime.coordinator.store import CoordinatorStore
from prime.core import tensors
from prime.core.aggregation import build_strategy
from prime.core.config import parse_config
from prime.core.identity import Identity
from prime.core.refusals import PENALIZED, Refusal
from tests import factories

ALICE = Identity.from_seed(b"a" * 32, "alice")
GLOBAL = {"w": torch.zeros(40, 10), "b": torch.zeros(10)}


def job(update: dict | str, strategy: str = "fedavg"):
    return parse_config({"job_id": "job", "admission": {"trainers": {"alice": ALICE.public_key_hex}},
                         "federated": {"min_clients": 1, "aggregation": {"name": strategy}},
                         "compression": {"update": update}})


class Spy:
    """Wraps the strategy to see what ``add`` is handed."""

    def __init__(self, inner) -> None:
        self.inner, self.added = inner, []

    def add(self, contribution) -> None:
        self.added.append(contribution.delta)
        self.inner.add(contribution)

    def __getattr__(self, name):
        return getattr(self.inner, name)


async def run(tmp_path, config, codec_name: str, blob: bytes):
    store = CoordinatorStore(tmp_path / "coordinator.sqlite")
    intake = UpdateIntake(config, store, SimpleNamespace(blobs=BlobStore(tmp_path / "blobs")), asyncio.create_task)
    now = time.time()
    ann = factories.announcement(job_id="job", round=1, model_version=0, selected=[ALICE.public_key], shards=[0],
                                 num_shards=1, issued=now, expires=now + 30, deadline=now + 30)
    strategy = Spy(build_strategy(config.federated.aggregation))
    collector = RoundCollector(ann, strategy)
    await intake.open_round(collector, GLOBAL)
    record = factories.update(job_id="job", round=1, model_version=0, node_name="alice",
                              blob_digest=tensors.digest(blob), blob_size=len(blob), codec=codec_name, providers=[],
                              issued=now, expires=now + 60)
    await intake.receive(record.seal(ALICE).to_bytes(), via="bus", inline=blob)
    await asyncio.gather(*intake._writes.values())
    return intake, collector, strategy


def delta(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(40, 10, generator=g) * 0.01, "b": torch.randn(10, generator=g) * 0.01}


def encoded(codec, d) -> bytes:
    return b"".join(codecs.encode(codec, d))


async def test_a_record_naming_another_codec_is_refused_as_wrong_codec_without_penalty(tmp_path):
    config = job("int8")
    intake, collector, _ = await run(tmp_path, config, "fp32", encoded(codecs.FP32(), delta()))
    assert intake.rejected == {"wrong_codec": 1} and not collector.accepted
    assert ALICE.public_key in collector.refused  # not waited for
    assert collector.conduct[ALICE.public_key].refusals == set()  # refused, not penalized
    assert Refusal.WRONG_CODEC not in PENALIZED


async def test_a_blob_with_other_codec_parameters_is_wrong_codec(tmp_path):
    intake, collector, _ = await run(tmp_path, job("int8"), "int8", encoded(codecs.Int8(block_size=64), delta()))
    assert intake.rejected == {"wrong_codec": 1} and not collector.accepted


async def test_a_topk_blob_with_repeated_indices_is_undecodable(tmp_path):
    parts = {"w/index": torch.tensor([1, 1, 2, 3], dtype=torch.int32), "w/value": torch.ones(4),
             "w/shape": torch.tensor([40, 10]), "b/index": torch.tensor([0], dtype=torch.int32),
             "b/value": torch.ones(1), "b/shape": torch.tensor([10])}
    meta = codecs.container.header(codecs.TopK())
    blob = b"".join(tensors.encode_parts(parts, metadata=meta))
    intake, collector, _ = await run(tmp_path, job("topk"), "topk", blob)
    assert intake.rejected == {"undecodable": 1}


@pytest.mark.parametrize("update, codec", [("int8", codecs.Int8()), ("fp16", codecs.FP16()),
                                           ({"name": "topk", "fraction": 0.1}, codecs.TopK(fraction=0.1))])
async def test_a_streaming_strategy_folds_the_update_encoded(tmp_path, update, codec):
    d = delta(1)
    intake, collector, strategy = await run(tmp_path, job(update), codec.name, encoded(codec, d))
    assert intake.rejected == {} and ALICE.public_key in collector.accepted
    (added,) = strategy.added
    assert isinstance(added, codecs.EncodedUpdate) and added.codec == codec  # never decoded as a whole
    result = strategy.inner.finish()
    expected = codecs.roundtrip(codec, d)
    assert all(torch.allclose(result.state[k], expected[k], atol=1e-7) for k in d)


async def test_an_in_memory_strategy_gets_the_update_decoded_once(tmp_path):
    intake, collector, strategy = await run(tmp_path, job("int8", "fedmedian"), "int8", encoded(codecs.Int8(), delta()))
    assert intake.rejected == {} and ALICE.public_key in collector.accepted
    (added,) = strategy.added
    assert type(added) is dict


async def test_updates_read_back_for_scoring_decode_with_their_codec(tmp_path):
    d = delta(2)
    blob = encoded(codecs.Int8(), d)
    intake, _, _ = await run(tmp_path, job("int8"), "int8", blob)
    ((digest, update),) = list(intake.read_back([tensors.digest(blob)]))
    assert isinstance(update, codecs.EncodedUpdate)
    assert all(torch.equal(update[k], codecs.roundtrip(codecs.Int8(), d)[k]) for k in d)
