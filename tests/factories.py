"""One place that builds protocol records for tests: sensible defaults, any field overridden.

Each factory fills every required field, so a test names only what it is about, and a new
record field is added here once instead of in every test."""

from __future__ import annotations

from typing import Any

from prime.core.records import RoundAnnouncement, RoundCommitted, UpdateRecord

DIGEST = "ab" * 32
TERMS = "0f" * 32


def announcement(**fields: Any) -> RoundAnnouncement:
    """A round-2 announcement; ``shards`` defaults to one per selected trainer (0, 1, …)."""
    base: dict[str, Any] = dict(job_id="job", term=1, round=2, model_version=1, model_digest=DIGEST, model_size=100,
                                providers=["127.0.0.1:9000"], selected=[], config_digest=TERMS, deadline=10.5,
                                issued=1.0, expires=10.5, total_rounds=5)
    base.update(fields)
    base.setdefault("shards", list(range(len(base["selected"]))))
    base.setdefault("num_shards", max(1, len(base["shards"]), *(s + 1 for s in base["shards"])))
    return RoundAnnouncement(**base)


def update(**fields: Any) -> UpdateRecord:
    base: dict[str, Any] = dict(job_id="job", term=1, round=2, model_version=1, node_name="t1", blob_digest="cd" * 32,
                                blob_size=50, num_samples=12, shard=None, metrics={"loss": 0.5},
                                providers=["127.0.0.1:9001"], issued=2.0, expires=602.0)
    return UpdateRecord(**{**base, **fields})


def committed(**fields: Any) -> RoundCommitted:
    base: dict[str, Any] = dict(job_id="job", term=1, round=2, model_version=2, model_digest=DIGEST,
                                checkpoint_digest=DIGEST, providers=["127.0.0.1:9"], total_rounds=5, participants=3,
                                metrics={"accuracy": 0.75}, server_state_digest=None, issued=3.0, expires=1e9)
    return RoundCommitted(**{**base, **fields})
