"""Evaluation gates: the thresholds a model version must meet to enter a registry stage.

``[gates.staging] min_accuracy = 0.9`` reads "accuracy at least 0.9"; ``max_bits_per_byte =
2.0`` "bits per byte at most 2.0". Stages are ordered (training < staging < production): to
enter a stage a version must pass that stage's gates and those of every stage below it.
A version enters a stage automatically at commit only if that stage has gates of its own
(an empty stage is reached by hand). A gate on a metric the task does not report is a
config error at startup; a version without that metric (the genesis model) fails the gate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from prime.core.errors import ConfigError

if TYPE_CHECKING:  # the CLIs read gates as plain data, without importing the config (and torch)
    from prime.core.config import GatesConfig

#: ``[gates]`` as the job config holds it, or as stored in the database (``{"staging": {...}, ...}``).
Gates = Union["GatesConfig", Mapping[str, Mapping[str, float]]]

#: Stages in promotion order; ``archived`` is out of it (reached by hand or by being replaced).
ORDERED_STAGES = ("training", "staging", "production")
STAGES = (*ORDERED_STAGES, "archived")
GATED_STAGES = ("staging", "production")


@dataclass(frozen=True)
class Gate:
    stage: str
    key: str  # min_accuracy
    metric: str  # accuracy
    bound: str  # min | max
    threshold: float

    def check(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """This gate against ``metrics``: the key, the threshold, the measured value and whether it passes."""
        value = metrics.get(self.metric)
        measured = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        passed = measured and (value >= self.threshold if self.bound == "min" else value <= self.threshold)
        return {"stage": self.stage, "gate": self.key, "threshold": self.threshold,
                "value": value if measured else None, "passed": bool(passed)}


def gates_of(config: Gates, stage: str) -> list[Gate]:
    """The gates of ``stage`` alone (``min_x`` / ``max_x`` keys, in file order)."""
    if stage not in GATED_STAGES:
        return []
    table = config.get(stage, {}) if isinstance(config, Mapping) else getattr(config, stage)
    return [Gate(stage, key, key[4:], key[:3], float(value)) for key, value in table.items()]


def gates_to_enter(config: Gates, stage: str) -> list[Gate]:
    """Every gate a version must pass to enter ``stage``: its own and those of the stages below it."""
    if stage not in ORDERED_STAGES:
        return []
    below = ORDERED_STAGES[:ORDERED_STAGES.index(stage) + 1]
    return [gate for s in below for gate in gates_of(config, s)]


@dataclass(frozen=True)
class GateResult:
    stage: str
    checks: list[dict[str, Any]]

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.checks)

    def explain(self) -> str:
        """``min_accuracy 0.9: 0.93 passes; max_loss 0.5: 0.61 FAILS`` (or ``no gates``)."""
        if not self.checks:
            return f"no gates for {self.stage}"
        parts = []
        for c in self.checks:
            value = "not measured" if c["value"] is None else f"{c['value']:.6g}"
            parts.append(f"{c['gate']} {c['threshold']:g}: {value} {'passes' if c['passed'] else 'FAILS'}")
        return "; ".join(parts)


def evaluate_gates(config: Gates, stage: str, metrics: dict[str, Any]) -> GateResult:
    return GateResult(stage, [gate.check(metrics) for gate in gates_to_enter(config, stage)])


def auto_stage(config: Gates, metrics: dict[str, Any]) -> tuple[str, GateResult | None]:
    """The highest stage a freshly committed version enters on its metrics, and the gates that let it
    (``("training", None)`` when no stage with gates of its own is passed)."""
    for stage in reversed(GATED_STAGES):
        if gates_of(config, stage):
            result = evaluate_gates(config, stage, metrics)
            if result.passed:
                return stage, result
    return "training", None


def check_gate_metrics(config: Gates, task_name: str, metrics: tuple[str, ...], source: str) -> None:
    """Refuse gates on metrics the task does not report, naming the key, the file and the task's metrics."""
    for stage in GATED_STAGES:
        for gate in gates_of(config, stage):
            if gate.metric not in metrics:
                raise ConfigError(
                    f"{source}: key 'gates.{stage}.{gate.key}': task {task_name!r} reports no metric "
                    f"{gate.metric!r}; it reports {', '.join(metrics)} (write min_<metric> or max_<metric>)")
