"""A real digits network with a staging gate: versions enter staging at commit by the gates, and
the operator's ``prime registry`` and ``prime audit`` commands work on the coordinator's data dir.

Processes, sockets, signatures and files are all real; the CLIs run as subprocesses.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

import prime
from prime.audit import AUDIT_FILE
from prime.coordinator import registry
from prime.coordinator.registry_cli import diff as registry_diff
from prime.coordinator.status import open_read_only
from prime.demo import LocalNetwork
from tests.integration.netutil import wait_for

pytestmark = pytest.mark.slow

ROUNDS = 2
STAGING_MIN_ACCURACY = 0.3  # every round of this job passes it (measured 0.6-0.9 after round 1)
PRODUCTION_MIN_ACCURACY = 0.999  # none does: production needs --force


def _cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "prime", *args], capture_output=True, text=True, timeout=120)
    if ok:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def _gate_promotions_logged(net: LocalNetwork) -> int:
    path = net.coordinator_dir / AUDIT_FILE
    return path.read_bytes().count(b'"by":"gates"') if path.exists() else 0


@pytest.fixture
def network(tmp_path):
    net = LocalNetwork(tmp_path / "net", trainers=2, rounds=ROUNDS, local_epochs=1,
                       gates={"staging": {"min_accuracy": STAGING_MIN_ACCURACY},
                              "production": {"min_accuracy": PRODUCTION_MIN_ACCURACY}})
    try:
        yield net
    finally:
        net.stop_all()


def test_gates_promote_at_commit_and_registry_cli_and_audit(network: LocalNetwork, tmp_path):
    net = network
    net.start_all()
    status = wait_for(net, lambda s: s["rounds_committed"] >= ROUNDS and s, 90, f"{ROUNDS} rounds")
    deadline = time.monotonic() + 30  # the commit's audit lines follow its transaction
    while _gate_promotions_logged(net) < ROUNDS and time.monotonic() < deadline:
        time.sleep(0.1)
    data_dir = str(net.coordinator_dir)

    # Auto-promotion at commit: every committed version passed the staging gate, none the production one.
    listed = json.loads(_cli("registry", "list", "--data-dir", data_dir, "--json").stdout)
    assert [v["version"] for v in listed] == list(range(ROUNDS + 1))
    assert listed[0]["stage"] == "training" and listed[0]["parent"] is None
    for v, row in zip(listed[1:], status["rounds"]):
        assert v["metrics"] == row["metrics"] and v["metrics"]["accuracy"] >= STAGING_MIN_ACCURACY
        assert v["stage"] == "staging"
        [promotion] = v["promotions"]
        assert (promotion["by"], promotion["to_stage"], promotion["forced"]) == ("gates", "staging", False)
        assert promotion["gates"][0]["gate"] == "min_accuracy" and promotion["gates"][0]["passed"]

    # show: the lineage of the last version.
    last = json.loads(_cli("registry", "show", "latest", "--data-dir", data_dir, "--json").stdout)
    assert (last["version"], last["parent"], last["round"]) == (ROUNDS, ROUNDS - 1, ROUNDS)
    assert sorted(c["name"] for c in last["contributors"]) == net.trainer_names
    assert last["strategy"] == "fedtrimmedavg" and last["task"] == "digits"
    assert last["config_digest"] == status["config_digest"]

    # diff: metrics and lineage (CLI), and how far the weights moved (in process: torch is loaded here).
    diff = json.loads(_cli("registry", "diff", "v1", "latest", "--no-weights", "--data-dir", data_dir,
                           "--json").stdout)
    acc = diff["metrics"]["accuracy"]
    assert acc[2] == pytest.approx(acc[1] - acc[0]) and diff["contributors"]["only_a"] == []
    _, db = open_read_only(net.coordinator_dir)
    entries = registry.versions(db)
    db.close()
    weights = registry_diff(net.coordinator_dir, entries[1], entries[-1], weights=True)["weights"]
    assert weights["relative_l2"] > 0 and weights["tensors"] >= 2

    # promote: the production gate fails, so by hand it is refused unless forced; forcing is recorded.
    refused = _cli("registry", "promote", "latest", "--to", "production", "--data-dir", data_dir, ok=False)
    assert refused.returncode == 2 and "does not pass the gates to enter production" in refused.stderr
    forced = json.loads(_cli("registry", "promote", "latest", "--to", "production", "--force", "--reason",
                             "release test", "--data-dir", data_dir).stdout)
    assert [(p["to_stage"], p["forced"]) for p in forced["promotions"]] == [("production", True)]
    replaced = json.loads(_cli("registry", "promote", "v1", "--to", "production", "--force", "--data-dir",
                               data_dir).stdout)  # one production version at a time: the last one is archived
    assert [(p["version"], p["to_stage"]) for p in replaced["promotions"]] == [(ROUNDS, "archived"), (1, "production")]

    # export: safetensors + card with the registry record; prime.load_model opens it.
    out = tmp_path / "export" / "model.safetensors"
    _cli("registry", "export", "production", "--out", str(out), "--data-dir", data_dir)
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["model_version"] == 1 and card["registry"]["stage"] == "production"
    assert prime.load_model(out) is not None

    # audit: the coordinator's real log verifies, and holds what happened.
    verified = _cli("audit", "verify", "--data-dir", data_dir)
    assert "chain, sequence, signatures and head valid" in verified.stdout
    events = [json.loads(line) for line in (net.coordinator_dir / AUDIT_FILE).read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.count("admission") == 2 and "coordinator_started" in kinds
    promotions = [e["fields"] for e in events if e["event"] == "promotion"]
    assert sum(p["by"] == "gates" for p in promotions) == ROUNDS
    assert any(p["forced"] and p["reason"] == "release test" for p in promotions)
    assert any(p["to_stage"] == "archived" and p["by"] == "registry" for p in promotions)
    commands = [e["fields"] for e in events if e["event"] == "operator_command"]
    assert [c["command"] for c in commands] == ["registry promote"] * 3 + ["registry export"]
    assert commands[0]["outcome"].startswith("refused")

    # Every node keeps one: a trainer's verifies against its admitted key.
    trainer_key = net.config.admission.trainers[net.trainer_names[0]]
    _cli("audit", "verify", "--data-dir", str(net.trainer_dir(net.trainer_names[0])), "--key", trainer_key)

    # An edited line of that log is caught, named by its number.
    lines = (net.coordinator_dir / AUDIT_FILE).read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"admission"', b'"admissioN"') if b'"admission"' in lines[2] else lines[2][:-2] + b"\n"
    (net.coordinator_dir / AUDIT_FILE).write_bytes(b"".join(lines))
    broken = _cli("audit", "verify", "--data-dir", data_dir, ok=False)
    assert broken.returncode == 1 and "INVALID at line 3" in broken.stderr
