"""The coordinator's budget keeper: refuse a spent budget at start, settle each round's spend, warn, stop.

Per commit (``driver.py``): each accepted update's claimed device seconds are capped at the
round's wall time times its devices (and the cut is logged), priced by device kind, and summed
with the round's wall time; the round's spend goes into the commit's transaction, with the stop
it causes when a cumulative limit is reached (that round is the job's last). After the commit, a
limit whose spend first reached ``notify_at`` of it gets a log line, a counter in ``metrics.json``
and a signed ``BudgetNotice`` on the job's ``budget`` topic; a stop gets the same, as ``stop``.
``usage()`` is ``{limit: (spent, limit)}`` for a metrics exporter.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from prime.coordinator import budget_store
from prime.coordinator.rounds import RoundCollector
from prime.coordinator.services import CoordinatorServices
from prime.core.budget import (
    BudgetConfig,
    BudgetNotice,
    Spend,
    UpdateSpend,
    capped_device_seconds,
    crossings,
    describe,
    reached,
    round_spend,
)
from prime.core.errors import CoordinatorError
from prime.core.identity import network_id

log = logging.getLogger(__name__)

#: How long a budget notice stays valid on the bus.
NOTICE_TTL = 3600.0


def refuse_if_spent(config: BudgetConfig, spent: Spend, *, source: str, database: str) -> None:
    """A job whose budget is already spent does not start: the error names each limit and what to do."""
    done = reached(config, spent)
    if done:
        lines = "; ".join(describe(name, s, limit) for name, s, limit in done)
        raise CoordinatorError(f"the job's budget is already spent ({lines}, committed in {database}); "
                               f"raise {', '.join('budget.' + n for n, _, _ in done)} in {source} to continue it")


class BudgetKeeper:
    def __init__(self, services: CoordinatorServices) -> None:
        self.s = services
        self.config: BudgetConfig = services.config.budget
        self.notices: Counter[str] = Counter()  # (event:limit) → notices published by this process
        self.capped = 0  # updates whose claimed device time was cut to the round's wall time
        self.stopped: dict[str, Any] | None = budget_store.read_meta(services.store.db, budget_store.STOPPED_KEY)

    def check_start(self) -> None:
        """Record the limits (for ``status``); refuse to start a job whose budget is spent."""
        store = self.s.store
        refuse_if_spent(self.config, self.spent(), source=self.s.config.source, database=str(store.path))
        budget_store.bind_limits(store.db, self.config)
        self.stopped = None  # a raised limit lets a stopped job go on

    def resume(self) -> None:
        """Before leading rounds (a start, or a standby's takeover of a mirrored database): a budget
        already reached keeps the job stopped, with the reason committed when it stopped."""
        done = reached(self.config, self.spent())
        if not done:
            self.stopped = None
            return
        self.stopped = budget_store.read_meta(self.s.store.db, budget_store.STOPPED_KEY) or {
            "reason": "budget", "limit": done[0][0], "spent": done[0][1], "limit_value": done[0][2],
            "round": self.s.store.last_committed_round(), "detail": "; ".join(describe(*d) for d in done)}

    def spent(self) -> Spend:
        return budget_store.total_spend(self.s.store.db)

    def usage(self) -> dict[str, tuple[float, float]]:
        """``{limit: (spent, limit)}`` for every limit that is set."""
        return self.spent().against(self.config)

    def settle(self, collector: RoundCollector, wall_seconds: float) -> tuple[Spend, dict, dict | None]:
        """The round's spend, its per-update detail, and the stop it causes (or None): what commits."""
        updates, detail = [], {}
        for key, record in sorted(collector.accepted.items()):
            counted, cut = capped_device_seconds(record.device_seconds, record.devices, wall_seconds)
            if cut:
                self.capped += 1
                log.warning("round %d: %s claims %.1f device seconds on %d device(s) in a %.1f s round; counting %.1f",
                            collector.round, record.node_name, record.device_seconds, record.devices, wall_seconds,
                            counted)
            kind = record.device_kind or "unknown"
            spend = UpdateSpend(counted, kind, record.peak_memory_bytes or 0,
                                record.device_seconds if cut else None)
            updates.append(spend)
            detail[network_id(key)] = {"node": record.node_name, "device_seconds": counted, "device_kind": kind,
                                       "devices": record.devices, "peak_memory_bytes": spend.peak_memory_bytes,
                                       "claimed_device_seconds": record.device_seconds}
        spend = round_spend(updates, wall_seconds, self.config)
        done = reached(self.config, self.spent().plus(spend))
        stop = None
        if done:
            name, spent, limit = done[0]
            stop = {"reason": "budget", "limit": name, "spent": spent, "limit_value": limit, "round": collector.round,
                    "detail": "; ".join(describe(*d) for d in done), "at": time.time()}
        return spend, detail, stop

    async def after_commit(self, round_number: int, term: int, before: Spend, stop: dict | None) -> None:
        """Warn about limits that crossed their threshold in this round, and announce a stop."""
        after = self.spent()
        for name, spent, limit in crossings(self.config, before, after):
            log.warning("budget: %s reached %.0f%% of its limit after round %d (%s)", name,
                        100 * self.config.notify_at, round_number, describe(name, spent, limit))
            await self._publish("threshold", name, spent, limit, round_number, term)
        if stop is not None:
            self.stopped = stop
            log.warning("budget: %s; round %d is the job's last, stopping", stop["detail"], round_number)
            if self.s.audit is not None:
                self.s.audit.log.append("budget_stop", **stop)  # stop names its round
            await self._publish("stop", stop["limit"], stop["spent"], stop["limit_value"], round_number, term)

    async def _publish(self, event: str, name: str, spent: float, limit: float, round_number: int, term: int) -> None:
        self.notices[f"{event}:{name}"] += 1
        now = time.time()
        notice = BudgetNotice(job_id=self.s.config.job_id, term=term, round=round_number, event=event, limit_name=name,
                              spent=float(spent), limit=float(limit), issued=now, expires=now + NOTICE_TTL)
        await self.s.bus.publish(self.s.topics.budget, notice.seal(self.s.identity).to_bytes())

    def metrics(self) -> dict[str, Any]:
        return {"usage": {name: {"spent": s, "limit": limit, "fraction": s / limit}
                          for name, (s, limit) in self.usage().items()},
                "notices": dict(self.notices), "capped_updates": self.capped, "stopped": self.stopped}
