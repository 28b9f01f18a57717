"""``prime init``: keys, a job.toml that loads, and the commands of every process."""

from __future__ import annotations

import re

import pytest

from prime.core.config import load_config
from prime.core.errors import ConfigError
from prime.core.identity import Identity
from prime.netinit import describe, init_network


def test_writes_keys_and_a_job_that_admits_them(tmp_path):
    plan = init_network(tmp_path / "my net", trainers=3, rounds=4, broker_port=1900, coordinator_port=7100,
                        metrics_port=9100)
    config = load_config(plan.job_file)
    assert config.job_id == "digits-my-net"
    assert config.coordinator_key == plan.coordinator_key == Identity.load_or_create(
        plan.directory / "coordinator").public_key_hex
    assert config.admission.trainers == plan.trainer_keys
    assert list(plan.trainer_keys) == ["trainer-001", "trainer-002", "trainer-003"]
    assert config.federated.rounds == 4 and config.network.mqtt_url == "mqtt://127.0.0.1:1900"
    lines = plan.command_lines()
    assert lines["broker"] == "prime broker --listen 127.0.0.1:1900"
    assert lines["coordinator"].endswith("--listen 127.0.0.1:7100 --metrics-port 9100")
    assert "'" in lines["trainer-002"]  # the path with a space is quoted
    assert lines["trainer-002"].endswith("--coordinators 127.0.0.1:7100 --data-dir "
                                         f"'{plan.directory}/trainer-002' --metrics-port 9102")
    text = describe(plan)
    assert all(f"  {line}" in text for line in lines.values())
    again = init_network(tmp_path / "my net", trainers=3, force=True)  # keys are kept
    assert again.trainer_keys == plan.trainer_keys and "--metrics-port" not in again.command_lines()["coordinator"]


@pytest.mark.parametrize("kwargs, message", [
    ({"trainers": 0}, "--trainers 0: a network needs at least one trainer"),
    ({"trainers": 1, "task": "nope"}, "--task 'nope': prime init writes jobs for digits, stdlib-lm"),
    ({"trainers": 1, "rounds": 0}, "--rounds 0: run at least one round"),
    ({"trainers": 2, "metrics_port": 65534}, "--metrics-port 65534: ports 65534-65536 (the coordinator's and one "
                                             "per trainer) must lie within 1-65535"),
])
def test_bad_input_says_what(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        init_network(tmp_path, **kwargs)


def test_an_existing_job_is_not_overwritten(tmp_path):
    init_network(tmp_path, trainers=1)
    with pytest.raises(ConfigError, match="job.toml exists; pass --force"):
        init_network(tmp_path, trainers=2)
    assert len(load_config(tmp_path / "job.toml").admission.trainers) == 1
