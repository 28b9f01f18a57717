"""What a coordinator writes to its node's audit log, in one place.

Events: ``coordinator_started`` (the admission set and terms it runs under), ``admission``
(a key's first accepted update in the job), ``refusal`` (once per round, key and reason, as
the database records it), ``penalty`` and ``slash`` (the ledger charges of a commit),
``exclusion`` (a key's standing fell below the threshold), ``promotion`` (by the gates at
commit, or archived because another version entered production). Lines follow the durable
state they describe: a commit's events are appended after its transaction commits.
"""

from __future__ import annotations

import sqlite3

from prime.audit import AuditLog
from prime.coordinator.registry import Promotion
from prime.coordinator.reputation import Standing
from prime.coordinator.store import LedgerCharge
from prime.core.config import JobConfig


class CoordinatorAudit:
    def __init__(self, log: AuditLog, config: JobConfig) -> None:
        self.log = log
        self.config = config
        self._contributors: set[bytes] | None = None  # keys with an accepted update in this job
        self._refusals: set[tuple[int, bytes | None, str]] = set()

    def started(self, role: str, terms_digest: str) -> None:
        admission = self.config.admission
        self.log.append("coordinator_started", job_id=self.config.job_id, role=role, terms_digest=terms_digest,
                        admitted=dict(admission.trainers), open=admission.open, stakes=dict(admission.stakes),
                        gates=self.config.gates.model_dump(mode="json"))

    def accepted(self, db: sqlite3.Connection, round_number: int, key: bytes, name: str) -> None:
        """An ``admission`` line the first time ``key`` contributes to the job (committed or not)."""
        if self._contributors is None:
            self._contributors = {k for (k,) in db.execute("SELECT DISTINCT node_key FROM updates")}
        if key in self._contributors:
            return
        self._contributors.add(key)
        self.log.append("admission", round=round_number, key=key, name=name,
                        listed=self.config.admission.listed(key), open_job=self.config.admission.open)

    def refused(self, round_number: int, key: bytes | None, name: str, reason: str, detail: str) -> None:
        seen = (round_number, key, reason)
        if seen in self._refusals:
            return
        if len(self._refusals) > 10_000:
            self._refusals.clear()
        self._refusals.add(seen)
        self.log.append("refusal", round=round_number, key=key, name=name, reason=reason, detail=detail[:500])

    def committed(self, round_number: int, version: int, charges: list[LedgerCharge],
                  before: dict[bytes, Standing], after: dict[bytes, Standing], promotions: list[Promotion]) -> None:
        for charge in charges:
            self.log.append(charge.kind, round=round_number, key=charge.node_key, reason=charge.reason,
                            amount_micro=charge.amount)
        for key, standing in sorted(after.items()):
            if standing.excluded_until > before.get(key, Standing()).excluded_until:
                self.log.append("exclusion", round=round_number, key=key, score=standing.score,
                                strikes=standing.strikes, excluded_until_round=standing.excluded_until)
        self.promoted(promotions)

    def promoted(self, promotions: list[Promotion]) -> None:
        for promotion in promotions:
            self.log.append("promotion", **promotion.as_fields())
