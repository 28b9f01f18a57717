"""with_retries: transient failures are retried with backoff, the final one re-raised unchanged."""

from __future__ import annotations

import pytest

from prime.core.errors import BlobError, DHTError
from prime.core.retry import backoff_delays, with_retries


def test_backoff_doubles_and_caps():
    assert backoff_delays(6, base=0.1, cap=1.0) == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff_delays(0) == []


async def test_succeeds_after_transient_failures():
    calls = []

    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise DHTError("peer restarting")
        return "ok"

    assert await with_retries(flaky, what="put", max_retries=3, base_delay=0.001) == "ok"
    assert len(calls) == 3


async def test_final_failure_is_reraised_once_logged(caplog):
    calls = []

    async def down():
        calls.append(1)
        raise BlobError("provider gone", reason="unavailable")

    with pytest.raises(BlobError) as info:
        await with_retries(down, what="fetch model", max_retries=2, base_delay=0.001)
    assert len(calls) == 3 and info.value.reason == "unavailable"
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "fetch model failed after 3 attempt(s)" in errors[0].getMessage()


async def test_other_errors_are_not_retried():
    calls = []

    async def bug():
        calls.append(1)
        raise ValueError("a bug, not a network hiccup")

    with pytest.raises(ValueError):
        await with_retries(bug, what="x", max_retries=5, base_delay=0.001)
    assert len(calls) == 1
