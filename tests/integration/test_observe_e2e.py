"""Issue 12, parts 7-9 end to end: ``prime init`` writes a network, its printed commands run as
real processes, every node's ``/metrics`` is scraped over HTTP while rounds commit, and
``prime report`` draws the run from the coordinator's database."""

from __future__ import annotations

import json
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from prime.core.net import free_port

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def scrape(port: int) -> dict[str, float]:
    """``/metrics`` as {sample with labels: value}, parsed by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def free_ports_in_a_row(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports (the coordinator's and each trainer's /metrics)."""
    import socket

    for _ in range(50):
        first = free_port()
        try:
            for port in range(first, first + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
    raise AssertionError(f"no {count} consecutive free ports")


def run_printed(lines: list[str], names: list[str], logs: Path) -> dict[str, subprocess.Popen]:
    """Each printed command as its own process (console scripts from this interpreter's bin)."""
    procs = {}
    for name, line in zip(names, lines):
        argv = shlex.split(line)
        log = open(logs / f"{name}.log", "wb")
        procs[name] = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        log.close()
        if name == "broker":
            time.sleep(0.5)  # the order the page gives: the broker first
    return procs


def test_init_run_scrape_report(tmp_path):
    root = tmp_path / "net"
    broker, coordinator, metrics = free_port(), free_port(), free_ports_in_a_row(3)
    printed = subprocess.run(
        [str(BIN / "prime"), "init", str(root), "--trainers", "2", "--rounds", "3", "--broker-port", str(broker),
         "--coordinator-port", str(coordinator), "--metrics-port", str(metrics)],
        capture_output=True, text=True, check=True).stdout
    commands = [line.strip() for line in printed.splitlines() if line.startswith("  prime")]
    assert [c.split()[0] for c in commands] == ["prime", "prime-coordinator", "prime-trainer", "prime-trainer"]
    ports = {"coordinator": metrics, "trainer-001": metrics + 1, "trainer-002": metrics + 2}
    procs = run_printed(commands, ["broker", "coordinator", "trainer-001", "trainer-002"], tmp_path)
    db_path = root / "coordinator" / "coordinator.sqlite"
    try:
        # While the job runs: scrape the coordinator once a round has committed, and each trainer
        # (three rounds, so the job is still running for two more when round 1 commits).
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline, (tmp_path / "coordinator.log").read_text()[-3000:]
            dead = {n: p.returncode for n, p in procs.items() if p.poll() is not None}
            assert not dead, f"exited early: {dead}"
            try:
                seen = scrape(ports["coordinator"])
            except (urllib.error.URLError, ConnectionError):
                seen = {}
            if seen.get("prime_rounds_total", 0) >= 1:
                break
            time.sleep(0.3)
        trainers = {name: scrape(ports[name]) for name in ("trainer-001", "trainer-002")}
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
            committed = db.execute("SELECT COUNT(*) FROM rounds").fetchone()[0]
            first_seconds = db.execute("SELECT seconds FROM rounds WHERE round=1").fetchone()[0]
        assert 1 <= seen["prime_rounds_total"] <= committed
        assert seen["prime_round_seconds_count"] == seen["prime_rounds_total"]
        assert seen["prime_round_seconds_sum"] >= first_seconds
        assert seen["prime_round_seconds_bucket{le=+Inf}"] == seen["prime_rounds_total"]
        assert seen["prime_updates_accepted_total"] >= 2
        assert seen["prime_node_info{node=coordinator,role=coordinator}"] == 1
        assert seen["prime_bytes_in_total{via=bus}"] > 0 and seen["prime_bytes_out_total{via=bus}"] > 0
        rewarded = {k: v for k, v in seen.items() if k.startswith("prime_reward_tokens")}
        assert {k.split("node=")[1].rstrip("}") for k in rewarded} == {"trainer-001", "trainer-002"}
        assert sum(rewarded.values()) == pytest.approx(100.0 * seen["prime_rounds_total"], rel=1e-6)
        for name, sample in trainers.items():
            assert sample[f"prime_node_info{{node={name},role=trainer}}"] == 1
            assert sample["prime_rounds_trained_total"] >= 1
            assert sample["prime_samples_per_second"] > 0
            assert sample["prime_bytes_out_total{via=bus}"] > 0

        # The job ends on its own; then the report.
        for name, proc in procs.items():
            if name != "broker":
                assert proc.wait(timeout=90) == 0, (tmp_path / f"{name}.log").read_text()[-2000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    out = tmp_path / "report"
    page = subprocess.run([str(BIN / "prime"), "report", "--data-dir", str(root / "coordinator"), "--out", str(out)],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert Path(page) == out / "index.html"
    html = (out / "index.html").read_text()
    report = json.loads((out / "report.json").read_text())
    for stem, chart in report["charts"].items():
        png = (out / chart["file"]).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000, stem
        assert f'src="{chart["file"]}"' in html
    from PIL import Image

    assert Image.open(out / "metrics.png").size[0] > 100

    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT round, participants, seconds, metrics, timings FROM rounds ORDER BY round").fetchall()
        ledger = dict(db.execute("SELECT u.node_name, SUM(l.amount) FROM ledger l JOIN (SELECT DISTINCT node_key, "
                                 "node_name FROM updates) u ON u.node_key = l.node_key WHERE l.kind='reward' "
                                 "GROUP BY u.node_name").fetchall())
    assert [r[0] for r in rows] == [1, 2, 3]
    charts = report["charts"]
    metrics_axes = charts["metrics"]["axes"]
    for name in json.loads(rows[0][3]):
        line = metrics_axes[f"held-out {name}"]["series"][name]
        assert line["x"] == [1.0, 2.0, 3.0]
        assert line["y"] == [json.loads(r[3])[name] for r in rows]
    bars = charts["participants"]["axes"]["trainers per round"]["series"]["participants"]
    assert bars["y"] == [float(r[1]) for r in rows]
    stacked = charts["round_time"]["axes"]["round time breakdown (seconds)"]["series"]
    assert set(stacked) == {*json.loads(rows[0][4]), "collect_aggregate_s"}
    for i, row in enumerate(rows):
        assert sum(s["y"][i] for s in stacked.values()) == pytest.approx(row[2])
        assert stacked["scoring_s"]["y"][i] == json.loads(row[4])["scoring_s"]
    shares = charts["rewards"]["axes"]["reward shares (ledger)"]
    total = sum(ledger.values())
    assert dict(zip(shares["categories"], shares["series"]["share"]["y"])) == pytest.approx(
        {name: amount / total for name, amount in ledger.items()})
    assert charts["refusals"]["axes"]["refused updates by reason"]["message"] == "no updates refused"
    assert charts["budget"]["axes"]["budget spend"]["message"] == "no budget configured"
    assert report["summary"]["rounds_committed"] == 3 and report["summary"]["ledger_valid"] is True
