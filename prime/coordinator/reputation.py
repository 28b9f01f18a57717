"""Reputation: a key's standing, from what the coordinator measured, never from what it claimed.

Each key starts at 1.0. A round's penalized refusals (``prime/core/refusals.py``) cost
``refusal_penalty`` each; harmful work (refused as harmful, copied, empty, or failing a
spot check) costs ``harm_penalty``; an update that earned a positive score gives back
``recovery`` (up to 1.0). Falling below ``threshold`` excludes the key from selection for
``exclusion_rounds`` rounds, doubled on each repeat (``strikes``), after which it comes
back at ``threshold``: one more offence excludes it again, for longer.

Pure logic: the store keeps one ``Standing`` per key and applies a round's changes in
the same transaction as the round (invariant 6).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prime.core.config import ReputationConfig
from prime.core.refusals import HARM, PENALIZED


@dataclass(frozen=True)
class Standing:
    score: float = 1.0
    strikes: int = 0
    #: The last round this key is excluded from selection (0: not excluded).
    excluded_until: int = 0

    def excluded(self, round_number: int) -> bool:
        return round_number <= self.excluded_until


@dataclass
class RoundConduct:
    """What one key did in one round, as the coordinator saw it."""

    refusals: set[str] = field(default_factory=set)  # distinct penalized refusal reasons
    refused: bool = False  # any refusal (penalized or not): not re-selected in this round
    credited: bool = False  # an accepted update with a positive measured score

    @property
    def harmful(self) -> bool:
        return bool(self.refusals & HARM)

    def note_refusal(self, reason: str) -> bool:
        """Record a refusal; True if it is one that costs reputation (and stake)."""
        self.refused = True
        if reason in PENALIZED:
            self.refusals.add(str(reason))
            return True
        return False


def next_standing(standing: Standing, conduct: RoundConduct, round_number: int, config: ReputationConfig) -> Standing:
    score = standing.score
    plain = conduct.refusals - HARM
    score -= config.refusal_penalty * len(plain)
    if conduct.harmful:
        score -= config.harm_penalty
    if conduct.credited and not conduct.refusals:
        score = min(1.0, score + config.recovery)
    score = max(0.0, score)
    if score < config.threshold and not standing.excluded(round_number):
        strikes = standing.strikes + 1
        until = round_number + config.exclusion_rounds * 2 ** (strikes - 1)
        return Standing(config.threshold, strikes, until)
    return Standing(score, standing.strikes, standing.excluded_until)
