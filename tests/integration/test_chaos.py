"""Chaos in CI: 40 seconds of random SIGKILLs (about 7 kills) (see tests/chaos.py; run it directly for longer).

PRIME_CHAOS_SECONDS sets the duration, PRIME_CHAOS_SEED the random seed (printed on failure).
"""

from __future__ import annotations

import os
import random

import pytest

from tests.chaos import passed, run_chaos

pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)
def test_random_kills_lose_nothing(tmp_path):
    seed = int(os.environ.get("PRIME_CHAOS_SEED", random.randrange(1 << 30)))
    duration = float(os.environ.get("PRIME_CHAOS_SECONDS", "40"))
    report = run_chaos(tmp_path / "chaos", duration=duration, seed=seed)
    print(f"chaos (seed {seed}): kills {report['kills']}, rounds committed {report['rounds_committed']}, "
          f"rounds re-announced {report['rounds_reannounced']}, rounds lost {len(report['rounds_lost'])}")
    assert report["kills"] >= duration / 6
    assert passed(report), f"seed {seed}: {report}"
