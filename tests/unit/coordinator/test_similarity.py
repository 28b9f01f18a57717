"""Copy detection's sketch coordinates: cheap for any model size, the same after a restart."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("total", [10, 4096, 9_738, 1 << 22, 304_000_000])
def test_sketch_coordinates_are_distinct_sorted_in_range_and_seeded(total):
    from prime.coordinator.similarity import sample_coordinates

    picks = sample_coordinates(total, 4096, torch.Generator().manual_seed(7))
    again = sample_coordinates(total, 4096, torch.Generator().manual_seed(7))
    assert torch.equal(picks, again)  # a restarted coordinator sketches the same coordinates
    assert bool((picks[1:] > picks[:-1]).all()) and int(picks[0]) >= 0 and int(picks[-1]) < total
    assert len(picks) == total if total <= 4096 else 4080 <= len(picks) <= 4096
