"""Hostile bytes as training text files: documents or a ``TaskError`` naming the file, nothing else."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prime.core.errors import TaskError
from prime.tasks import text_data

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LINES = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=32).map(lambda t: json.dumps({"text": t}).encode()),
    st.sampled_from([b"{}", b"[]", b'{"text": 3}', b'{"text": null}', b"null", b'"text"', b"\xff\xfe", b"  "]),
)


@SETTINGS
@given(st.lists(LINES, max_size=12), st.sampled_from([".jsonl", ".txt"]))
def test_any_file_gives_documents_or_a_task_error_naming_it(lines, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        path.write_bytes(b"\n".join(lines))
        try:
            documents = text_data.file_documents([path])
        except TaskError as exc:
            assert "data" in str(exc)
            return
        assert all(isinstance(d.text, bytes) and d.text for d in documents)
        for d in documents:
            d.text.decode("utf-8")  # every document is text


@SETTINGS
@given(st.lists(st.binary(min_size=1, max_size=40), min_size=2, max_size=20, unique=True),
       st.floats(0.01, 0.9), st.integers(1, 3))
def test_split_and_partition_cover_every_document_once(texts, fraction, count):
    docs = [text_data.Document(f"doc-{i}", t) for i, t in enumerate(texts)]
    training, held = text_data.split(docs, fraction)
    assert held and training and {d.name for d in training} | {d.name for d in held} == {d.name for d in docs}
    assert not {d.name for d in training} & {d.name for d in held}
    if len(training) >= count:
        shards = text_data.partition(training, count)
        assert sorted(d.name for s in shards for d in s) == sorted(d.name for d in training)
