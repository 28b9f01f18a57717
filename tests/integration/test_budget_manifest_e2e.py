"""Budgets and the job manifest end to end, real processes on 127.0.0.1.

- A digits job of 4 rounds with ``budget.rounds = 2`` stops gracefully after round 2: the
  coordinator and the trainers exit 0, the reason is committed and shown by ``status``, the
  threshold and the stop go out as signed notices on the job's ``budget`` topic, and the
  coordinator refuses to start again on the spent budget, naming the limit.
- A user task whose data files are pinned by a manifest (``prime manifest build``, the coordinator
  started with ``--manifest``): a trainer whose shard file was altered (still valid data) refuses to
  train, naming the file and both digests, stays up, and the rounds commit without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sys
import threading
import time

import pytest

from prime.bus.client import BusClient
from prime.cli import main as prime_main
from prime.bus.topics import Topics
from prime.coordinator.daemon import Coordinator
from prime.coordinator.status import format_status
from prime.core.config import load_config
from prime.core.errors import CoordinatorError
from prime.core.budget import BudgetNotice
from prime.demo import LocalNetwork
from prime.telemetry import read_metrics
from tests.integration.netutil import wait_for
from tests.integration.test_tasks_e2e import USER_TASK, _blobs

pytestmark = pytest.mark.slow


class NoticeListener:
    """Subscribes to a job's budget topic on the real broker and keeps the verified notices."""

    def __init__(self, url: str, job_id: str, signer: bytes) -> None:
        self.url, self.topic, self.signer = url, Topics(job_id).budget, signer
        self.notices: list[BudgetNotice] = []
        self.ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()
        assert self.ready.wait(15), "the budget listener did not connect"

    async def _run(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        bus = BusClient(self.url, "budget-listener")
        await bus.connect()
        await bus.subscribe(self.topic)
        self.ready.set()

        async def consume() -> None:
            async for topic, payload in bus.messages():
                if topic == self.topic:
                    self.notices.append(BudgetNotice.open(payload, signer=self.signer)[0])

        task = asyncio.create_task(consume())
        await self._stop.wait()
        task.cancel()
        await bus.close()

    def close(self) -> None:
        if self.thread.is_alive() and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop may have closed just now
                self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)


def test_a_round_budget_stops_the_job_gracefully_and_a_spent_budget_refuses_to_start(tmp_path):
    net = LocalNetwork(tmp_path / "net", trainers=2, rounds=4, local_epochs=1,
                       budget={"rounds": 2, "notify_at": 0.5, "device_hours": 10.0, "cost": 100.0,
                               "memory_bytes_per_trainer": 1 << 40, "prices": {"cpu": 2.0}})
    listener = None
    try:
        net.start_infrastructure()
        listener = NoticeListener(f"mqtt://127.0.0.1:{net.broker_port}", net.config.job_id,
                                  net.config.coordinator_public_key)
        net.start_coordinator()
        for i in range(2):
            net.start_trainer(i)
        deadline = time.monotonic() + 240
        while any(p.poll() is None for n, p in net.procs.items() if n not in ("broker", "dht")):
            assert time.monotonic() < deadline, "\n".join(net.log_tail(n, 20) for n in net.procs)
            time.sleep(0.2)
        exits = {n: p.returncode for n, p in net.procs.items() if n not in ("broker", "dht")}
        status = net.status()
        time.sleep(0.3)  # the last notice was published before the coordinator exited
        listener.close()
        notices = [(n.event, n.limit_name, n.round) for n in listener.notices]
        with pytest.raises(CoordinatorError) as again:  # what prime-coordinator prints as "error: …", exit 2
            asyncio.run(Coordinator.create(load_config(net.config_path), data_dir=net.coordinator_dir,
                                           listen=("127.0.0.1", net.coordinator_port)))
    finally:
        if listener is not None:
            listener.close()
        net.stop_all()
    assert exits == {"coordinator": 0, **{name: 0 for name in net.trainer_names}}, exits
    assert status["rounds_committed"] == 2, status["rounds_committed"]
    budget = status["budget"]
    assert budget["stopped"]["limit"] == "rounds" and budget["stopped"]["round"] == 2
    assert budget["limits"]["rounds"] == {"spent": 2.0, "limit": 2.0}
    device_s = sum(r["device_seconds"] for r in budget["rounds"])
    assert device_s > 0 and budget["spent"]["cost"] == pytest.approx(device_s / 3600 * 2.0)
    kinds = {u["device_kind"] for r in budget["rounds"] for u in r["updates"].values()}
    assert kinds == {"cpu"}
    peak = budget["limits"]["memory_bytes_per_trainer"]["spent"]  # reported, signed, and under the limit
    assert 0 < peak < 1 << 40 and status["rejected_updates"] == []
    shown = format_status(status)
    assert "stopped by its budget after round 2: rounds 2 of 2 (100%)" in shown, shown
    assert "device_hours" in shown and "cost" in shown
    assert ("threshold", "rounds", 1) in notices and ("stop", "rounds", 2) in notices, notices
    metrics = read_metrics(net.coordinator_dir)
    assert metrics["budget"]["notices"]["threshold:rounds"] == 1 and metrics["budget"]["stopped"]["round"] == 2
    assert "raise budget.rounds in" in str(again.value) and "rounds 2 of 2" in str(again.value), again.value
    from prime.audit.verify import verify_log

    audited = [json.loads(line) for line in (net.coordinator_dir / "audit.jsonl").read_text().splitlines()]
    stops = [line["fields"] for line in audited if line["event"] == "budget_stop"]
    assert [(s["limit"], s["round"]) for s in stops] == [("rounds", 2)], stops
    assert verify_log(net.coordinator_dir, net.config.coordinator_public_key).ok
    from prime.observability.report import write_report

    write_report(net.coordinator_dir, tmp_path / "report")  # prime report: the budget chart holds the spend
    chart = json.loads((tmp_path / "report" / "report.json").read_text())["charts"]["budget"]["axes"]["budget spend"]
    assert chart["series"]["rounds"]["y"] == [1.0, 2.0]
    assert chart["series"]["cost"]["y"][-1] == pytest.approx(budget["spent"]["cost"])


USER_TASK_WITH_FILES = USER_TASK.replace(
    "from prime.tasks import TaskOptions, TaskSpec",
    "from prime.tasks import DataSource, TaskOptions, TaskSpec",
).replace(
    '    metrics=("accuracy", "loss"),\n)',
    '    metrics=("accuracy", "loss"),\n'
    '    data_source=lambda options, shard: DataSource(\n'
    '        "blobs", "v1", {f"part-{shard.index}.jsonl": Path(shard.data_path) / f"part-{shard.index}.jsonl"}),\n)',
)


def test_a_trainer_whose_data_is_not_the_manifests_names_the_file_and_does_not_train(tmp_path, capsys):
    assert "data_source=" in USER_TASK_WITH_FILES
    workdir = tmp_path / "net"
    (workdir / "my_pkg").mkdir(parents=True)
    (workdir / "my_pkg" / "__init__.py").write_text("")
    (workdir / "my_pkg" / "tasks.py").write_text(USER_TASK_WITH_FILES)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        _blobs(data / f"part-{i}.jsonl", 200, seed=i)
    _blobs(data / "validation.jsonl", 200, seed=99)
    altered = tmp_path / "altered"
    altered.mkdir()
    lines = (data / "part-2.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    lines[0] = json.dumps({**row, "y": 1 - row["y"]})  # one flipped label: still valid data, not the job's
    (altered / "part-2.jsonl").write_text("\n".join(lines) + "\n")
    good, bad = (hashlib.sha256(p.read_bytes()).hexdigest() for p in (data / "part-2.jsonl", altered / "part-2.jsonl"))

    net = LocalNetwork(workdir, trainers=3, rounds=2, local_epochs=1,
                       task={"name": "my_pkg.tasks:spec", "options": {"features": 4}},
                       federated={"min_clients": 2, "round_timeout": 3.0})
    manifest = workdir / "manifest.json"
    sys.path.insert(0, str(workdir))  # the user's task must import here too, as in the network's processes
    try:
        assert prime_main(["manifest", "build", "--config", str(net.config_path), "--data-path", str(data),
                           "--compute-target", "cpu", "--out", str(manifest)]) == 0
    finally:
        sys.path.remove(str(workdir))
        for name in [m for m in sys.modules if m == "my_pkg" or m.startswith("my_pkg.")]:
            del sys.modules[name]
    digest = json.loads(capsys.readouterr().out)["digest"]
    odd = net.trainer_names[2]
    try:
        net.start_infrastructure()
        net.start_coordinator("--data-path", str(data), "--manifest", str(manifest))
        net.start_trainer(0, "--data-path", str(data))
        net.start_trainer(1, "--data-path", str(data))
        net.start_trainer(2, "--data-path", str(altered))
        status = wait_for(net, lambda s: s["rounds_committed"] >= 2 and s, 90, "2 rounds without the altered trainer")
        alive = net.procs[odd].poll() is None
        metrics = read_metrics(net.trainer_dir(odd))
    finally:
        net.stop_all()
    assert all(r["participants"] == 2 for r in status["rounds"]), status["rounds"]
    assert status["manifest"]["digest"] == digest and status["manifest"]["dataset"] == {"name": "blobs", "version": "v1"}
    assert alive, "a trainer whose data differs keeps following the job"
    log = net.log_tail(odd, 200)
    assert f"data file part-2.jsonl: here {bad}, manifest {good}" in log, log
    assert "not training" in log and metrics["dropped_messages"]["data_mismatch"] >= 1
    assert "data file" not in net.log_tail(net.trainer_names[0], 200)
