"""Copies: an update that is another trainer's update of the same round, or any update of the
round before (a stale one, its own included), earns nothing.

The same blob digest is an exact copy. A near copy (scaled a little, or with a little noise
added) is caught by comparing a sketch of each update: its values at a few thousand
coordinates sampled once per round (the same for every update), so comparing costs a few
kilobytes per update whatever the model's size. Honest trainers on different shards send
clearly different updates, and a fresh round's update differs from the last round's; a
cosine similarity above ``threshold`` is a copy. Of one round's copies, the update that
arrived first keeps its credit.
"""

from __future__ import annotations

import torch

from prime.core.errors import UpdateRejected
from prime.core.refusals import Refusal

StateDict = dict[str, torch.Tensor]
SKETCH_COORDINATES = 4096
COPY_THRESHOLD = 0.999


class CopyDetector:
    def __init__(self, threshold: float = COPY_THRESHOLD, coordinates: int = SKETCH_COORDINATES) -> None:
        self.threshold = threshold
        self.coordinates = coordinates
        self._picks: list[tuple[str, torch.Tensor]] = []
        self._seen: dict[bytes, tuple[str, torch.Tensor]] = {}  # signer -> (digest, unit sketch)
        self._previous: list[tuple[str, torch.Tensor]] = []  # the last round's updates

    def begin_round(self, round_number: int, template: StateDict) -> None:
        names = sorted(template)
        sizes = [template[n].numel() for n in names]
        total = sum(sizes)
        flat = sample_coordinates(total, self.coordinates, torch.Generator().manual_seed(round_number))
        self._picks, start = [], 0
        for name, size in zip(names, sizes):
            inside = flat[(flat >= start) & (flat < start + size)] - start
            if len(inside):
                self._picks.append((name, inside))
            start += size
        self._seen, self._previous = {}, []

    def sketch(self, delta: StateDict) -> torch.Tensor:
        values = torch.cat([delta[name].reshape(-1)[index].to(torch.float64) for name, index in self._picks])
        norm = values.norm()
        return values / norm if norm > 0 else values

    def remember_previous(self, deltas: list[tuple[str, StateDict]]) -> None:
        """The last round's accepted updates (digest, delta): resending one of them is a stale copy."""
        self._previous = [(digest, self.sketch(delta)) for digest, delta in deltas]

    def check(self, signer: bytes, digest: str, sketch: torch.Tensor) -> None:
        """Raise ``copied_update`` if this update is (nearly) one another trainer already sent this
        round, or one of the last round's."""
        for other_digest, other_sketch in self._previous:
            if other_digest == digest or float(torch.dot(sketch, other_sketch)) > self.threshold:
                raise UpdateRejected(Refusal.COPIED_UPDATE, "a stale update: (nearly) one of the last round's")
        for other, (other_digest, other_sketch) in self._seen.items():
            if other == signer:
                continue
            if other_digest == digest:
                raise UpdateRejected(Refusal.COPIED_UPDATE, "the same bytes as another trainer's update this round")
            similarity = float(torch.dot(sketch, other_sketch))
            if similarity > self.threshold:
                raise UpdateRejected(Refusal.COPIED_UPDATE, f"cosine similarity {similarity:.5f} with another "
                                     "trainer's update this round")

    def accept(self, signer: bytes, digest: str, sketch: torch.Tensor) -> None:
        self._seen[signer] = (digest, sketch)


#: Above this many values, coordinates are drawn with replacement: a permutation of a 304M-value
#: model took the coordinator ~15 s (and 2.4 GB) per round on the H200 host's CPU.
PERMUTE_MAX = 1 << 22


def sample_coordinates(total: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """About ``count`` distinct flat indices below ``total``, sorted; all of them if ``total <= count``."""
    if total <= count:
        return torch.arange(total)
    if total <= PERMUTE_MAX:
        return torch.randperm(total, generator=generator)[:count].sort().values
    # With replacement, then merged: of 4,096 draws among millions, a repeat is rare and only drops one.
    return torch.randint(total, (count,), generator=generator).unique()


def is_empty(delta: StateDict) -> bool:
    """An update that changes nothing (a free rider's zeros)."""
    return all(not bool(v.any()) for v in delta.values())
