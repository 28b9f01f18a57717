"""The report's charts: each draws one matplotlib figure (Agg, no pyplot state) from a run's
committed data and says what it plotted, read back from the figure's own artists.

What ``plotted`` returns is written to ``report.json`` beside the PNGs, so a reader (and the
test) can check every point on a chart against the coordinator's database.
"""

from __future__ import annotations

import io
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

#: Timings keys the driver records per round; the rest of the round's wall time is "collect + aggregate".
OTHER_PHASE = "collect_aggregate_s"


def _figure(title: str, width: float = 7.0, height: float = 3.6) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title)
    return fig, ax


def _empty(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=12, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _by_round(ax: Any) -> None:
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def plotted(fig: Figure) -> dict[str, Any]:
    """Every line and bar series on the figure's axes: ``{axes title: {label: {"x": [...], "y": [...]}}}``,
    plus each axes' category tick labels and any message shown instead of data."""
    out: dict[str, Any] = {}
    for ax in fig.axes:
        series: dict[str, Any] = {}
        for line in ax.get_lines():
            series[line.get_label()] = {"x": [float(v) for v in line.get_xdata()],
                                        "y": [float(v) for v in line.get_ydata()]}
        for container in ax.containers:
            if isinstance(container, BarContainer):
                vertical = container.orientation == "vertical"
                where = [p.get_x() + p.get_width() / 2 if vertical else p.get_y() + p.get_height() / 2
                         for p in container.patches]
                series[container.get_label()] = {"x": [float(v) for v in where],
                                                  "y": [float(v) for v in container.datavalues]}
        ticks = [t.get_text() for t in (ax.get_xticklabels() if not any(
            isinstance(c, BarContainer) and c.orientation == "horizontal" for c in ax.containers)
            else ax.get_yticklabels())]
        out[ax.get_title()] = {"series": series, "categories": [t for t in ticks if t],
                               "message": " ".join(t.get_text() for t in ax.texts)}
    return out


def round_metrics(rounds: list[dict[str, Any]]) -> Figure:
    """One panel per held-out metric the task reports, by round."""
    names = list(dict.fromkeys(k for r in rounds for k in r["metrics"]))
    fig = Figure(figsize=(7.0, 2.6 * max(1, len(names))), layout="constrained")
    FigureCanvasAgg(fig)
    if not names:
        _empty(fig.add_subplot(title="held-out metrics"), "no rounds committed yet")
        return fig
    for i, name in enumerate(names):
        ax = fig.add_subplot(len(names), 1, i + 1, title=f"held-out {name}")
        points = [(r["round"], r["metrics"][name]) for r in rounds if r["metrics"].get(name) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        _by_round(ax)
        ax.grid(alpha=0.3)
    return fig


def participants(rounds: list[dict[str, Any]]) -> Figure:
    fig, ax = _figure("trainers per round")
    if not rounds:
        _empty(ax, "no rounds committed yet")
        return fig
    ax.bar([r["round"] for r in rounds], [r["participants"] for r in rounds], label="participants", color="tab:blue")
    _by_round(ax)
    ax.set_ylabel("accepted updates")
    return fig


def round_time(rounds: list[dict[str, Any]]) -> Figure:
    """Each round's wall time, stacked by phase (``rounds.timings``; the rest is collecting and aggregating)."""
    fig, ax = _figure("round time breakdown (seconds)")
    if not rounds:
        _empty(ax, "no rounds committed yet")
        return fig
    phases = list(dict.fromkeys(k for r in rounds for k in (r["timings"] or {})))
    x = [r["round"] for r in rounds]
    bottom = [0.0] * len(rounds)
    for phase in [*phases, OTHER_PHASE]:
        if phase == OTHER_PHASE:
            heights = [max(0.0, r["seconds"] - sum((r["timings"] or {}).values())) for r in rounds]
        else:
            heights = [float((r["timings"] or {}).get(phase, 0.0)) for r in rounds]
        ax.bar(x, heights, bottom=bottom, label=phase)
        bottom = [b + h for b, h in zip(bottom, heights)]
    _by_round(ax)
    ax.legend(fontsize=8)
    return fig


def reward_shares(rewards: dict[str, float]) -> Figure:
    fig, ax = _figure("reward shares (ledger)")
    total = sum(v for v in rewards.values() if v > 0)
    if not total:
        _empty(ax, "no rewards credited yet")
        return fig
    names = list(rewards)
    ax.barh(range(len(names)), [rewards[n] / total for n in names], label="share", color="tab:green")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel(f"share of {total:.4f} tokens")
    return fig


def refusals(by_reason: dict[str, int]) -> Figure:
    fig, ax = _figure("refused updates by reason")
    if not by_reason:
        _empty(ax, "no updates refused")
        return fig
    reasons = sorted(by_reason)
    ax.bar(range(len(reasons)), [by_reason[r] for r in reasons], label="refused", color="tab:red")
    ax.set_xticks(range(len(reasons)), reasons, rotation=20, ha="right")
    ax.set_ylabel("updates")
    return fig


def budget_spend(budget: dict[str, dict[str, Any]]) -> Figure:
    """Spend by round per limit, with the limit as a dashed line: ``{limit: {"rounds", "spent", "limit"}}``."""
    fig, ax = _figure("budget spend")
    if not budget:
        _empty(ax, "no budget configured")
        return fig
    for name, usage in sorted(budget.items()):
        (line,) = ax.plot(usage["rounds"], usage["spent"], marker="o", label=name)
        ax.axhline(usage["limit"], linestyle="--", color=line.get_color(), label=f"{name} limit")
    _by_round(ax)
    ax.legend(fontsize=8)
    return fig
