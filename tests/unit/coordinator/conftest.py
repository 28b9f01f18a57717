"""Real keys and real SQLite stores for coordinator tests (exposed as fixtures only,
so the tests work under any pytest import mode)."""

from __future__ import annotations

import pytest

from prime.coordinator.status import DB_NAME
from prime.coordinator.store import AcceptedUpdate, CoordinatorStore, RoundCommit
from prime.core.identity import Identity

COORD = Identity.from_seed(b"c" * 32, "coordinator")
TRAINERS = [Identity.from_seed(bytes([65 + i]) * 32, f"trainer-{i}") for i in range(4)]


def _make_commit(round_number: int, trainers=TRAINERS[:2], samples=(10, 30), rewards=None, **kw) -> RoundCommit:
    updates = [
        AcceptedUpdate(t.public_key, t.name, f"{round_number:02x}{i:02x}" * 16, n, n / sum(samples))
        for i, (t, n) in enumerate(zip(trainers, samples))
    ]
    if rewards is None:
        rewards = {t.public_key: 1_000_000 * n // sum(samples) for t, n in zip(trainers, samples)}
    base = dict(round=round_number, model_digest=f"{round_number:02x}" * 32, model_size=1000 + round_number,
                updates=updates, rewards=rewards,
                metrics={"accuracy": 0.5 + round_number / 100, "loss": 1.0 / (round_number + 1)},
                seconds=1.5, announcements=1)
    base.update(kw)
    return RoundCommit(**base)


@pytest.fixture
def coord() -> Identity:
    return COORD


@pytest.fixture
def trainers() -> list[Identity]:
    return TRAINERS


@pytest.fixture
def make_commit():
    """``make_commit(round, trainers=..., samples=..., rewards=..., **overrides)`` -> RoundCommit."""
    return _make_commit


@pytest.fixture
def store(tmp_path):
    s = CoordinatorStore(tmp_path / DB_NAME)
    s.bind_job("job-1", COORD.public_key)
    s.record_genesis("00" * 32, 1000)
    yield s
    s.close()
