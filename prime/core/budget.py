"""A job's budget: its limits, what has been spent against them, and when to warn or stop.

Limits (``[budget]``; 0 means no limit): the job's wall time, the rounds it commits, device-hours
(each update's measured device seconds, summed by the coordinator), cost (device-hours priced per
device kind from ``[budget.prices]``) and the peak memory of one trainer. Spend is committed with
each round. When a limit's spend first reaches ``notify_at`` of it the coordinator logs, counts and
publishes a signed ``BudgetNotice``; when a cumulative limit is reached the round that reached it
is the job's last (it finishes, it is never cut short) and the reason is committed with it. A job
whose budget is already spent refuses to start. The memory limit is per update, not cumulative:
the coordinator refuses an update whose trainer peaked above it (``over_memory_budget``), and a
trainer that peaks above it does not send (``prime/trainer/budget.py``).

Pure: the coordinator's side is ``prime/coordinator/budget.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prime.core.envelope import Domain
from prime.core.records import _Record

#: Cumulative limits, in the order status shows them: reaching one ends the job.
CUMULATIVE = ("wall_seconds", "rounds", "device_hours", "cost")
MEMORY = "memory_bytes_per_trainer"


class BudgetConfig(BaseModel):
    """``[budget]``: every limit 0 (none) by default; ``[budget.prices]`` per device kind per device-hour."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The job's wall time in seconds, summed over the rounds it committed (time it was led).
    wall_seconds: float = Field(0.0, ge=0.0)
    rounds: int = Field(0, ge=0)
    device_hours: float = Field(0.0, ge=0.0)
    cost: float = Field(0.0, ge=0.0)
    memory_bytes_per_trainer: int = Field(0, ge=0)
    #: The share of a limit at which the coordinator warns (log line, metric, bus event).
    notify_at: float = Field(0.8, gt=0.0, le=1.0)
    #: Price of one device-hour per device kind (``cpu``, ``nvidia-h200``, …).
    prices: dict[str, float] = {}

    @field_validator("prices")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        bad = sorted(k for k, v in value.items() if not (v >= 0 and math.isfinite(v)))
        if bad:
            raise ValueError(f"prices must be finite and non-negative: {', '.join(bad)}")
        return value

    @model_validator(mode="after")
    def _cost_needs_prices(self) -> "BudgetConfig":
        if self.cost > 0 and not self.prices:
            raise ValueError("budget.cost needs [budget.prices]: a price per device-hour for each device kind "
                             "(e.g. cpu = 0.05, nvidia-h200 = 3.5)")
        return self

    def limits(self) -> dict[str, float]:
        """The limits that are set (name → limit)."""
        values = {"wall_seconds": self.wall_seconds, "rounds": self.rounds, "device_hours": self.device_hours,
                  "cost": self.cost, MEMORY: self.memory_bytes_per_trainer}
        return {k: float(v) for k, v in values.items() if v > 0}

    def price(self, kind: str | None) -> float:
        """Price of one device-hour of ``kind``; a kind the table does not list costs its highest price
        (a trainer cannot make its work free by naming an unknown device)."""
        if kind in self.prices:
            return self.prices[kind]
        return max(self.prices.values(), default=0.0)


@dataclass(frozen=True)
class Spend:
    """What a job has spent: totals over its committed rounds (memory: the highest peak seen)."""

    rounds: int = 0
    wall_seconds: float = 0.0
    device_seconds: float = 0.0
    cost: float = 0.0
    peak_memory_bytes: int = 0

    def plus(self, other: "Spend") -> "Spend":
        return Spend(self.rounds + other.rounds, self.wall_seconds + other.wall_seconds,
                     self.device_seconds + other.device_seconds, self.cost + other.cost,
                     max(self.peak_memory_bytes, other.peak_memory_bytes))

    def against(self, config: BudgetConfig) -> dict[str, tuple[float, float]]:
        """``{limit: (spent, limit)}`` for every limit that is set (device time in hours)."""
        spent = {"wall_seconds": self.wall_seconds, "rounds": float(self.rounds),
                 "device_hours": self.device_seconds / 3600.0, "cost": self.cost, MEMORY: float(self.peak_memory_bytes)}
        return {name: (spent[name], limit) for name, limit in config.limits().items()}


@dataclass(frozen=True)
class UpdateSpend:
    """One accepted update's measured device time, as the coordinator counts it (after the cap)."""

    device_seconds: float
    device_kind: str
    peak_memory_bytes: int
    #: What the trainer claimed, when the cap cut it (else None).
    claimed: float | None = None


def capped_device_seconds(claimed: float | None, devices: int, round_wall_seconds: float) -> tuple[float, bool]:
    """(device seconds counted, whether the claim was cut): no update uses more device time than the
    round's wall time on every one of its devices. A missing claim counts the whole of that."""
    ceiling = max(0.0, round_wall_seconds) * max(1, devices)
    if claimed is None or not math.isfinite(claimed):
        return ceiling, False
    return (ceiling, True) if claimed > ceiling else (max(0.0, claimed), False)


def round_spend(updates: list[UpdateSpend], wall_seconds: float, config: BudgetConfig) -> Spend:
    """One committed round's spend: its wall time, its updates' device time, their price."""
    device = sum(u.device_seconds for u in updates)
    cost = sum(u.device_seconds / 3600.0 * config.price(u.device_kind) for u in updates)
    peak = max((u.peak_memory_bytes for u in updates), default=0)
    return Spend(1, wall_seconds, device, cost, peak)


def reached(config: BudgetConfig, spend: Spend) -> list[tuple[str, float, float]]:
    """The cumulative limits ``spend`` has reached: (name, spent, limit)."""
    usage = spend.against(config)
    return [(name, *usage[name]) for name in CUMULATIVE if name in usage and usage[name][0] >= usage[name][1]]


def crossings(config: BudgetConfig, before: Spend, after: Spend) -> list[tuple[str, float, float]]:
    """Limits whose spend reached ``notify_at`` of the limit between ``before`` and ``after`` (once
    per limit and job: a limit already past the threshold before does not cross again)."""
    old, new = before.against(config), after.against(config)
    threshold = config.notify_at
    return [(name, spent, limit) for name, (spent, limit) in new.items()
            if spent >= threshold * limit and old[name][0] < threshold * limit]


def describe(name: str, spent: float, limit: float) -> str:
    """``rounds 3 of 3 (100%)``, ``device_hours 0.012 of 0.015 (80%)``."""
    shown = (lambda v: f"{v:.0f}") if name in ("rounds", MEMORY) else (lambda v: f"{v:.4g}")
    return f"{name} {shown(spent)} of {shown(limit)} ({100 * spent / limit:.0f}%)"


class BudgetNotice(_Record):
    """Coordinator → everyone: a budget limit crossed its notification threshold, or stopped the job."""

    DOMAIN: ClassVar[Domain] = Domain.BUDGET
    job_id: str = Field(max_length=64)
    term: int = Field(ge=1)
    round: int = Field(ge=1)
    #: ``threshold`` (spend reached ``notify_at`` of the limit) or ``stop`` (the limit is reached).
    event: str = Field(pattern=r"^(threshold|stop)$")
    limit_name: str = Field(pattern=r"^[a-z_]{1,32}$")
    spent: float
    limit: float
    issued: float
    expires: float
