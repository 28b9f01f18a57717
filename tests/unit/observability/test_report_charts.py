"""Each report chart plots exactly the data it is given, and says so when there is none."""

from __future__ import annotations

import pytest

from prime.observability import charts

ROUNDS = [
    {"round": 1, "participants": 3, "seconds": 4.0, "metrics": {"accuracy": 0.5, "loss": 1.2},
     "timings": {"scoring_s": 0.5, "evaluate_s": 0.25}},
    {"round": 2, "participants": 2, "seconds": 3.0, "metrics": {"accuracy": 0.7, "loss": 0.9},
     "timings": {"scoring_s": 0.25, "evaluate_s": 0.5}},
]


def test_round_charts_plot_every_round():
    fig = charts.round_metrics(ROUNDS)
    axes = charts.plotted(fig)
    assert axes["held-out accuracy"]["series"]["accuracy"] == {"x": [1.0, 2.0], "y": [0.5, 0.7]}
    assert axes["held-out loss"]["series"]["loss"] == {"x": [1.0, 2.0], "y": [1.2, 0.9]}
    assert charts.png(fig).startswith(b"\x89PNG")
    bars = charts.plotted(charts.participants(ROUNDS))["trainers per round"]["series"]["participants"]
    assert bars == {"x": [1.0, 2.0], "y": [3.0, 2.0]}
    stacked = charts.plotted(charts.round_time(ROUNDS))["round time breakdown (seconds)"]["series"]
    assert stacked["scoring_s"]["y"] == [0.5, 0.25]
    assert stacked["evaluate_s"]["y"] == [0.25, 0.5]
    assert stacked[charts.OTHER_PHASE]["y"] == [3.25, 2.25]


def test_rewards_refusals_and_budget():
    shares = charts.plotted(charts.reward_shares({"alice": 75.0, "bob": 25.0}))["reward shares (ledger)"]
    assert shares["categories"] == ["alice", "bob"]
    assert shares["series"]["share"]["y"] == [0.75, 0.25]
    refused = charts.plotted(charts.refusals({"stale": 2, "bad_signature": 5}))["refused updates by reason"]
    assert dict(zip(refused["categories"], refused["series"]["refused"]["y"])) == {"bad_signature": 5.0, "stale": 2.0}
    spend = charts.plotted(charts.budget_spend({"gpu_hours": {"rounds": [1, 2], "spent": [1.0, 2.5], "limit": 4.0}}))
    series = spend["budget spend"]["series"]
    assert series["gpu_hours"] == {"x": [1.0, 2.0], "y": [1.0, 2.5]}
    assert series["gpu_hours limit"]["y"] == [4.0, 4.0]


@pytest.mark.parametrize("chart, data, title, message", [
    (charts.round_metrics, [], "held-out metrics", "no rounds committed yet"),
    (charts.participants, [], "trainers per round", "no rounds committed yet"),
    (charts.round_time, [], "round time breakdown (seconds)", "no rounds committed yet"),
    (charts.reward_shares, {}, "reward shares (ledger)", "no rewards credited yet"),
    (charts.refusals, {}, "refused updates by reason", "no updates refused"),
    (charts.budget_spend, {}, "budget spend", "no budget configured"),
])
def test_an_empty_chart_says_why(chart, data, title, message):
    fig = chart(data)
    assert charts.plotted(fig)[title] == {"series": {}, "categories": [], "message": message}
    assert charts.png(fig).startswith(b"\x89PNG")


def test_a_fresh_coordinator_reports_empty_charts_and_bad_paths_say_what(tmp_path):
    import json

    from prime.coordinator.status import DB_NAME
    from prime.coordinator.store import CoordinatorStore
    from prime.core.errors import ConfigError, CoordinatorError
    from prime.core.identity import Identity
    from prime.observability.report import write_report

    with pytest.raises(CoordinatorError, match=f"no coordinator database at {tmp_path / DB_NAME}"):
        write_report(tmp_path, tmp_path / "out")
    store = CoordinatorStore(tmp_path / DB_NAME)
    store.bind_job("job-1", Identity.generate().public_key)
    store.close()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match="is a file; give a directory"):
        write_report(tmp_path, tmp_path / "a-file")
    page = write_report(tmp_path, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["summary"]["rounds_committed"] == 0 and report["summary"]["job_id"] == "job-1"
    assert {stem: next(iter(c["axes"].values()))["message"] for stem, c in report["charts"].items()} == {
        "metrics": "no rounds committed yet", "participants": "no rounds committed yet",
        "round_time": "no rounds committed yet", "rewards": "no rewards credited yet",
        "refusals": "no updates refused", "budget": "no budget configured"}
    assert page.read_text().count("<img ") == 6
