"""The job's agreed terms: what shapes an update is in the digest; per-node settings are not."""

from __future__ import annotations

from prime.core.agreement import canonical, differences, job_terms, terms_digest
from prime.core.config import parse_config

OPTIONS = {"hidden": [128], "dirichlet_alpha": 0.5}


def digest(data: dict, options: dict = OPTIONS) -> str:
    return terms_digest(job_terms(parse_config(data), options))


def test_training_recipe_task_and_split_change_the_digest():
    base = digest({})
    assert digest({"training": {"learning_rate": 0.1}}) != base
    assert digest({"federated": {"local_epochs": 3}}) != base
    assert digest({"data": {"num_shards": 7}}) != base
    assert digest({}, {**OPTIONS, "hidden": [64]}) != base
    assert digest({"task": {"name": "other"}}) != base
    assert digest({"job_id": "another"}) != base


def test_per_node_and_coordinator_only_settings_do_not():
    base = digest({})
    assert digest({"network": {"mqtt_url": "mqtt://10.0.0.1:1883", "timeout": 30.0}}) == base
    assert digest({"fault_tolerance": {"max_checkpoints": 9}}) == base
    assert digest({"federated": {"min_clients": 1, "round_timeout": 5.0, "reward_pool": 1.0, "rounds": 3}}) == base


def test_digest_is_of_the_canonical_bytes_and_differences_name_keys():
    mine = job_terms(parse_config({}), OPTIONS)
    theirs = job_terms(parse_config({"training": {"learning_rate": 0.1, "optimizer": {"name": "adam"}}}), OPTIONS)
    import hashlib

    assert terms_digest(mine) == hashlib.sha256(canonical(mine)).hexdigest()
    assert differences(mine, theirs) == [
        "training.learning_rate: here 0.05, coordinator 0.1",
        'training.optimizer.name: here "sgd", coordinator "adam"',
    ]
    assert differences(mine, {**mine, "extra": 1}) == ["extra: here (not set), coordinator 1"]
    assert differences(mine, mine) == []
