"""The job manifest: canonical digest, strict bounded decoding, and naming the file that differs."""

from __future__ import annotations

import json

import pytest

from prime.core.errors import DecodeError
from prime.core.manifest import DatasetRef, Manifest, TaskRef, canonical, data_differences, decode, manifest_digest

A, B, C = "aa" * 32, "bb" * 32, "cc" * 32


def manifest(**kw) -> Manifest:
    base = dict(job_id="j", dataset=DatasetRef(name="blobs", version="v1"),
                shards={"0": {"part-0.jsonl": A}, "1": {"part-1.jsonl": B, "extra.bin": C}}, seed=3,
                compute_target="cpu", prime_version="0.1.0",
                task=TaskRef(entry_point="my_pkg.tasks:spec", source_digest=C, source_file="my_pkg/tasks.py"))
    base.update(kw)
    return Manifest(**base)


def test_the_digest_is_of_canonical_bytes_and_changes_with_any_field():
    m = manifest()
    assert decode(canonical(m)) == m and manifest_digest(decode(canonical(m))) == manifest_digest(m)
    assert canonical(m) == json.dumps(json.loads(canonical(m)), sort_keys=True, separators=(",", ":")).encode()
    others = [manifest(seed=4), manifest(compute_target="8x nvidia-h200"), manifest(prime_version="0.2.0"),
              manifest(dataset=DatasetRef(name="blobs", version="v2")), manifest(shards={"0": {"part-0.jsonl": B}})]
    assert len({manifest_digest(m), *map(manifest_digest, others)}) == 6


def test_differences_name_each_file_with_both_digests():
    m = manifest()
    assert data_differences({"part-0.jsonl": A}, m, 0) == []
    assert data_differences({"part-0.jsonl": B}, m, 0) == [f"data file part-0.jsonl: here {B}, manifest {A}"]
    lines = data_differences({"part-1.jsonl": B, "extra.bin": "(missing)", "new.bin": A}, m, 1)
    assert lines == [f"data file extra.bin: here (missing), manifest {C}",
                     f"data file new.bin: here {A}, manifest (not in the manifest)"]
    assert data_differences({}, m, 7) == ["shard 7: not in the manifest (it lists shards 0, 1)"]


@pytest.mark.parametrize("data, why", [
    (b"\xff", "not JSON"),
    (b"[]", "JSON object"),
    (b"{}", "malformed manifest"),
    (json.dumps({**json.loads(canonical(manifest())), "seed": "3"}).encode(), "seed"),
    (json.dumps({**json.loads(canonical(manifest())), "shards": {"x": {}}}).encode(), "shards"),
    (json.dumps({**json.loads(canonical(manifest())), "shards": {"0": {"a": "zz"}}}).encode(), "shards"),
    (json.dumps({**json.loads(canonical(manifest())), "format": 2}).encode(), "format"),
    (json.dumps({**json.loads(canonical(manifest())), "extra": 1}).encode(), "extra"),
])
def test_bad_manifests_are_decode_errors_that_say_where(data, why):
    with pytest.raises(DecodeError, match=why):
        decode(data)


def test_the_decoder_is_bounded():
    with pytest.raises(DecodeError, match="exceeds 10"):
        decode(b" " * 11, max_bytes=10)
