"""Job config loading: TOML/JSON, defaults, and errors that name the key and the file."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from prime.core.config import (
    JobConfig,
    OptimizerName,
    SchedulerName,
    dump_toml,
    load_config,
    parse_config,
)
from prime.core.errors import ConfigError, PrimeError
from prime.core.identity import Identity

KEY_A = Identity.from_seed(b"a" * 32).public_key_hex
KEY_B = Identity.from_seed(b"b" * 32).public_key_hex

TOML_JOB = f"""
job_id = "digits-7"
coordinator_key = "{KEY_A}"

[task]
name = "digits"

[task.options]
hidden = [32, 16]

[training]
batch_size = 16
learning_rate = 0.01

[training.optimizer]
name = "adamw"
beta1 = 0.8
beta2 = 0.99
weight_decay = 0.01

[training.scheduler]
name = "cosine"
t_max = 10
eta_min = 0.001

[federated]
min_clients = 1
participation_rate = 0.5

[admission.trainers]
alice = "{KEY_B}"
"""


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_load_toml(tmp_path):
    cfg = load_config(write(tmp_path, "job.toml", TOML_JOB))
    assert cfg.job_id == "digits-7"
    assert cfg.coordinator_public_key == bytes.fromhex(KEY_A)
    assert cfg.task.name == "digits" and cfg.task.options == {"hidden": [32, 16]}
    assert cfg.training.batch_size == 16
    assert cfg.training.learning_rate == 0.01
    opt = cfg.training.optimizer
    assert (opt.name, opt.beta1, opt.beta2, opt.weight_decay) == (OptimizerName.ADAMW, 0.8, 0.99, 0.01)
    sched = cfg.training.scheduler
    assert (sched.name, sched.t_max, sched.eta_min) == (SchedulerName.COSINE, 10, 0.001)
    assert cfg.federated.participation_rate == 0.5
    assert cfg.admission.trainers == {"alice": KEY_B}
    assert cfg.admission.admits(bytes.fromhex(KEY_B))
    assert not cfg.admission.admits(bytes.fromhex(KEY_A))
    # untouched sections keep their defaults
    assert cfg.network == JobConfig().network


def test_load_json_equals_toml(tmp_path):
    from_toml = load_config(write(tmp_path, "job.toml", TOML_JOB))
    data = tomllib.loads(TOML_JOB)
    from_json = load_config(write(tmp_path, "job.json", json.dumps(data)))
    assert from_json == from_toml


def test_defaults():
    cfg = parse_config({})
    assert cfg == JobConfig()
    assert cfg.job_id == "prime-job"
    assert cfg.coordinator_key is None and cfg.coordinator_public_key is None
    assert cfg.task.name == "digits" and cfg.task.options == {}
    assert cfg.data.num_shards == 0 and cfg.num_shards == 1  # one per admitted trainer; none listed
    assert cfg.federated.local_epochs == 1 and cfg.federated.local_steps == 0
    assert cfg.training.precision.value == "fp32" and cfg.training.gradient_accumulation == 1
    assert cfg.training.optimizer.name is OptimizerName.SGD
    assert cfg.training.optimizer.momentum == 0.9
    assert cfg.training.scheduler.name is SchedulerName.CONSTANT
    assert cfg.federated.aggregation.name == "fedtrimmedavg" and cfg.federated.aggregation.beta == 0.2
    assert cfg.federated.min_clients == 2
    assert cfg.network.max_message_size == 256 * 1024 * 1024
    assert cfg.network.enable_compression is False
    # Closed by default: with no listed trainers nobody is admitted until the job says open = true.
    assert not cfg.admission.open and not cfg.admission.admits(b"\x01" * 32)
    assert cfg.security.max_clock_skew == 30.0 and cfg.security.record_ttl == 600.0


def test_peer_assist_applies_from_the_threshold_up_and_zero_turns_it_off():
    default = JobConfig().network
    assert default.peer_assist_min_bytes == 64 * 1024 * 1024
    assert not default.peer_assists(64 * 1024 * 1024 - 1) and default.peer_assists(64 * 1024 * 1024)
    always = parse_config({"network": {"peer_assist_min_bytes": 1, "inline_blob_max_bytes": 0}}).network
    assert always.peer_assists(1) and not always.peer_assists(0)
    off = parse_config({"network": {"peer_assist_min_bytes": 0}}).network
    assert not off.peer_assists(0) and not off.peer_assists(10**12)
    inline = parse_config({"network": {"peer_assist_min_bytes": 1}}).network  # small models ride inline instead
    assert not inline.peer_assists(inline.inline_blob_max_bytes) and inline.peer_assists(inline.inline_blob_max_bytes + 1)


def test_open_admission_caps_unlisted_weight_and_lists_only_named_keys():
    cfg = parse_config({"admission": {"open": True, "open_max_samples": 50, "trainers": {"b": KEY_B}}})
    listed, stranger = bytes.fromhex(KEY_B), b"\x01" * 32
    assert cfg.admission.admits(stranger) and not cfg.admission.listed(stranger)
    assert cfg.admission.weight(stranger, 10_000) == 50
    assert cfg.admission.weight(listed, 10_000) == 10_000


def test_config_is_frozen():
    cfg = parse_config({})
    with pytest.raises(Exception):
        cfg.training.batch_size = 3  # type: ignore[misc]


def test_unknown_key_names_key_path_and_file(tmp_path):
    path = write(tmp_path, "job.toml", "[training]\nbatch_sise = 8\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "training.batch_sise" in msg
    assert str(path) in msg


def test_unknown_top_level_key(tmp_path):
    path = write(tmp_path, "job.json", json.dumps({"jobid": "x"}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "jobid" in str(info.value) and str(path) in str(info.value)


def test_wrong_type_names_key_path_and_file(tmp_path):
    path = write(tmp_path, "job.toml", '[training]\nbatch_size = "big"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "training.batch_size" in msg and str(path) in msg
    assert "big" in msg


def test_every_bad_key_is_reported():
    with pytest.raises(ConfigError) as info:
        parse_config({"training": {"batch_size": 0}, "network": {"timout": 1}}, "cfg.toml")
    msg = str(info.value)
    assert "training.batch_size" in msg and "network.timout" in msg and "cfg.toml" in msg


def test_nested_optimizer_typo_names_full_path():
    with pytest.raises(ConfigError, match=r"training\.optimizer\.momentun"):
        parse_config({"training": {"optimizer": {"momentun": 0.5}}})


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="cannot read config") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_directory_is_unreadable(tmp_path):
    path = tmp_path / "dir.toml"
    path.mkdir()
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path)


def test_non_utf8_file_is_config_error(tmp_path):
    """A file that is not text is 'unreadable': ConfigError, not a bare UnicodeDecodeError."""
    path = write(tmp_path, "job.toml", b'job_id = "\xff\xfe"\n')
    with pytest.raises(ConfigError):
        load_config(path)


@pytest.mark.parametrize("name", ["job.yaml", "job", "job.TOML.bak"])
def test_bad_suffix(tmp_path, name):
    path = write(tmp_path, name, "job_id = 'x'\n")
    with pytest.raises(ConfigError, match=r"\.toml or \.json"):
        load_config(path)


def test_invalid_toml(tmp_path):
    path = write(tmp_path, "job.toml", "[training\nbatch_size = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_invalid_json(tmp_path):
    path = write(tmp_path, "job.json", '{"job_id": ')
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(path)


def test_json_top_level_must_be_object(tmp_path):
    path = write(tmp_path, "job.json", "[1, 2]")
    with pytest.raises(ConfigError, match="top level"):
        load_config(path)


def test_config_error_is_prime_error():
    assert issubclass(ConfigError, PrimeError)


def test_dump_toml_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, "job.toml", TOML_JOB))
    text = dump_toml(cfg)
    assert load_config(write(tmp_path, "again.toml", text)) == cfg
    assert parse_config(tomllib.loads(dump_toml(JobConfig()))) == JobConfig()


def test_dump_toml_round_trips_non_default_values(tmp_path):
    cfg = parse_config({
        "job_id": "j.1",
        "network": {"mqtt_url": "mqtt://h:1", "enable_compression": True, "max_message_size": 1234},
        "federated": {"reward_pool": 0.25, "rounds": 0},
        "training": {"optimizer": {"name": "sgd", "momentum": 0.0}, "gradient_clipping": 1e-05},
    })
    assert parse_config(tomllib.loads(dump_toml(cfg))) == cfg


def test_dump_toml_round_trips_trainer_names_needing_quotes():
    """Trainer names are free-form dict keys; dump_toml must quote the ones that are not bare keys."""
    cfg = parse_config({"admission": {"trainers": {"alice.smith": KEY_A, "bob jones": KEY_B}}})
    assert parse_config(tomllib.loads(dump_toml(cfg))) == cfg


@pytest.mark.parametrize("key", ["ab" * 31, "ab" * 33, "zz" * 32, "", "0x" + "ab" * 31])
def test_admission_key_must_be_32_bytes_hex(key):
    with pytest.raises(ConfigError, match="admission.trainers") as info:
        parse_config({"admission": {"trainers": {"mallory": key}}, "federated": {"min_clients": 1}})
    assert "mallory" in str(info.value)


def test_admission_key_case_does_not_lock_trainer_out():
    """An upper-case hex key passes validation, so it must also admit that trainer."""
    ident = Identity.from_seed(b"u" * 32)
    cfg = parse_config({"admission": {"trainers": {"u": ident.public_key_hex.upper()}}, "federated": {"min_clients": 1}})
    assert cfg.admission.admits(ident.public_key)


@pytest.mark.parametrize("key", ["ab" * 31, "not hex", "ab" * 33])
def test_coordinator_key_validated(key):
    with pytest.raises(ConfigError, match="coordinator_key"):
        parse_config({"coordinator_key": key})


def test_min_clients_above_admitted_trainers_refused():
    trainers = {"a": KEY_A, "b": KEY_B}
    with pytest.raises(ConfigError, match="min_clients=3 exceeds the 2 admitted"):
        parse_config({"admission": {"trainers": trainers}, "federated": {"min_clients": 3}})
    ok = parse_config({"admission": {"trainers": trainers}, "federated": {"min_clients": 2}})
    assert ok.federated.min_clients == 2
    # an open job has no such limit
    assert parse_config({"federated": {"min_clients": 50}}).federated.min_clients == 50


@pytest.mark.parametrize("job_id", ["", "has space", "a/b", "x" * 65])
def test_job_id_pattern(job_id):
    with pytest.raises(ConfigError, match="job_id"):
        parse_config({"job_id": job_id})


def test_sgd_momentum():
    cfg = parse_config({"training": {"optimizer": {"name": "sgd", "momentum": 0.5}}})
    assert cfg.training.optimizer.momentum == 0.5
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="training.optimizer.momentum"):
            parse_config({"training": {"optimizer": {"momentum": bad}}})


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_betas_and_weight_decay(name):
    cfg = parse_config({"training": {"optimizer": {"name": name, "beta1": 0.5, "beta2": 0.9, "weight_decay": 0.1}}})
    opt = cfg.training.optimizer
    assert opt.name.value == name and (opt.beta1, opt.beta2, opt.weight_decay) == (0.5, 0.9, 0.1)
    for field, bad in (("beta1", 1.0), ("beta2", 1.5), ("beta1", -0.5), ("weight_decay", -1.0)):
        with pytest.raises(ConfigError, match=f"training.optimizer.{field}"):
            parse_config({"training": {"optimizer": {"name": name, field: bad}}})


def test_unknown_optimizer_and_scheduler():
    with pytest.raises(ConfigError, match="training.optimizer.name"):
        parse_config({"training": {"optimizer": {"name": "lion"}}})
    with pytest.raises(ConfigError, match="training.scheduler.name"):
        parse_config({"training": {"scheduler": {"name": "step"}}})


def test_cosine_scheduler_fields():
    cfg = parse_config({"training": {"scheduler": {"name": "cosine", "t_max": 7, "eta_min": 0.002}}})
    assert cfg.training.scheduler.t_max == 7 and cfg.training.scheduler.eta_min == 0.002
    with pytest.raises(ConfigError, match="training.scheduler.t_max"):
        parse_config({"training": {"scheduler": {"t_max": 0}}})
    with pytest.raises(ConfigError, match="training.scheduler.eta_min"):
        parse_config({"training": {"scheduler": {"eta_min": -0.1}}})


@pytest.mark.parametrize(
    "section, data",
    [
        ("data.num_shards", {"data": {"num_shards": -1}}),
        ("training.precision", {"training": {"precision": "fp8"}}),
        ("training.gradient_accumulation", {"training": {"gradient_accumulation": 0}}),
        ("federated.local_steps", {"federated": {"local_steps": -1}}),
        ("federated.participation_rate", {"federated": {"participation_rate": 1.5}}),
        ("federated.aggregation", {"federated": {"aggregation": {"name": "kram"}}}),
        ("federated.aggregation.beta", {"federated": {"aggregation": {"name": "fedtrimmedavg", "beta": 0.5}}}),
        ("federated.aggregation.num_malicious", {"federated": {"aggregation": {"name": "krum", "num_malicious": "x"}}}),
        ("scoring.harm_margin", {"scoring": {"harm_margin": -1}}),
        ("verification.spot_check_rate", {"verification": {"spot_check_rate": 2}}),
        ("network.max_message_size", {"network": {"max_message_size": 0}}),
        ("network.peer_assist_min_bytes", {"network": {"peer_assist_min_bytes": -1}}),
        ("fault_tolerance.max_checkpoints", {"fault_tolerance": {"max_checkpoints": 0}}),
    ],
)
def test_range_and_choice_checks(section, data):
    with pytest.raises(ConfigError, match=section.replace(".", r"\.")):
        parse_config(data)


@pytest.mark.parametrize("data, advice", [
    ({"model": {"hidden": [64]}}, r"'model' is no longer read; the model is the task's"),
    ({"data": {"dataset": "digits"}}, r"'data.dataset' is no longer read"),
    ({"data": {"num_partitions": 4}}, r"'data.num_partitions' is no longer read; write data.num_shards"),
    ({"data": {"dirichlet_alpha": 0.3}}, r"'data.dirichlet_alpha' is no longer read; write it under \[task.options\]"),
])
def test_keys_of_earlier_versions_say_what_to_write_instead(data, advice):
    with pytest.raises(ConfigError, match=advice):
        parse_config(data, "old.toml")


def test_local_steps_replace_local_epochs():
    from prime.trainer.engine import LocalWork

    assert LocalWork.of(parse_config({"federated": {"local_steps": 50, "local_epochs": 2}}).federated) == \
        LocalWork(epochs=2, steps=50)  # steps win: the engine counts steps when steps > 0
    assert LocalWork.of(parse_config({"federated": {"local_epochs": 3}}).federated) == LocalWork(epochs=3, steps=0)


def test_shard_assignment_by_admission_order_or_listing():
    keys = [Identity.from_seed(bytes([i]) * 32).public_key for i in range(1, 4)]
    trainers = {f"t{i}": k.hex() for i, k in enumerate(keys)}
    cfg = parse_config({"admission": {"trainers": trainers}})
    assert cfg.num_shards == 3 and [cfg.shard_of(k) for k in keys] == [0, 1, 2]  # distinct by default
    listed = parse_config({"admission": {"trainers": trainers}, "data": {"num_shards": 2, "shards": {"t0": 1}}})
    assert [listed.shard_of(k) for k in keys] == [1, 1, 0]  # t0 listed; t1, t2 by position modulo 2
    stranger = Identity.from_seed(b"z" * 32).public_key
    assert 0 <= listed.shard_of(stranger) < 2
    with pytest.raises(ConfigError, match="data.shards names trainers not in"):
        parse_config({"admission": {"trainers": trainers}, "data": {"shards": {"nobody": 0}}})
    with pytest.raises(ConfigError, match=r"outside shards 0..1"):
        parse_config({"admission": {"trainers": trainers}, "data": {"num_shards": 2, "shards": {"t0": 2}}})


def test_a_strategy_that_cannot_work_with_min_clients_is_a_config_error():
    assert parse_config({"federated": {"aggregation": {"name": "krum", "num_malicious": 1},
                                       "min_clients": 5}}).federated.aggregation.name == "krum"
    with pytest.raises(ConfigError, match=r"key 'federated'.*krum needs more than 2f\+2 = 6 updates per round; "
                                          r"federated.min_clients is 5"):
        parse_config({"federated": {"aggregation": {"name": "krum", "num_malicious": 2}, "min_clients": 5}})
    with pytest.raises(ConfigError, match="federated.aggregation_strategy' is no longer read"):
        parse_config({"federated": {"aggregation_strategy": "fedavg"}})


def test_spot_checks_need_reproducible_rounds_and_stakes_need_admitted_names():
    with pytest.raises(ConfigError, match="needs training.reproducible_rounds = true"):
        parse_config({"verification": {"spot_check_rate": 0.5}})
    assert parse_config({"verification": {"spot_check_rate": 0.5}, "training": {"reproducible_rounds": True}})
    with pytest.raises(ConfigError, match="admission.stakes names trainers not in"):
        parse_config({"admission": {"stakes": {"ghost": 10.0}}})
