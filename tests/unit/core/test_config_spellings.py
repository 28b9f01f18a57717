"""What users type: the seed design's sample trainer config loads as written, or says what to write."""

from __future__ import annotations

import pytest

from prime.core.config import OptimizerName, load_config, parse_config
from prime.core.errors import ConfigError

#: The seed design's sample trainer config.toml, byte for byte as a user would type it.
DESIGN_SAMPLE = """\
[training]
batch_size = 32
learning_rate = 0.001
local_epochs = 5
[training.optimizer]
type = "AdamW"
weight_decay = 0.01
[network]
timeout = 30
max_message_size = 104857600
enable_compression = true
[fault_tolerance]
checkpoint_interval = 300
max_retries = 3
"""


def test_the_design_sample_loads_as_written(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(DESIGN_SAMPLE)
    config = load_config(path)
    assert config.training.optimizer.name is OptimizerName.ADAMW and config.training.optimizer.weight_decay == 0.01
    assert config.training.batch_size == 32 and config.training.learning_rate == 0.001
    assert config.federated.local_epochs == 5  # prime's home for it
    assert config.network.timeout == 30.0  # seconds, as the design means
    assert config.network.max_message_size == 104857600 and config.network.enable_compression
    assert config.fault_tolerance.checkpoint_interval == 300.0  # seconds between a trainer's checkpoints
    assert config.fault_tolerance.max_retries == 3


def test_the_same_config_in_prime_spelling_is_the_same_config():
    ours = parse_config({"training": {"batch_size": 32, "learning_rate": 0.001,
                                      "optimizer": {"name": "adamw", "weight_decay": 0.01}},
                         "federated": {"local_epochs": 5}})
    theirs = parse_config({"training": {"batch_size": 32, "learning_rate": 0.001, "local_epochs": 5,
                                        "optimizer": {"type": "AdamW", "weight_decay": 0.01}}})
    assert ours == theirs  # so the agreed terms (and their digest) are the same too


@pytest.mark.parametrize("spelled", ["AdamW", "ADAMW", "adamw"])
def test_optimizer_names_ignore_case(spelled):
    assert parse_config({"training": {"optimizer": {"name": spelled}}}).training.optimizer.name is OptimizerName.ADAMW
    assert parse_config({"training": {"scheduler": {"name": "Cosine"}}}).training.scheduler.name.value == "cosine"


@pytest.mark.parametrize("data,message", [
    ({"training": {"optimizer": {"type": "AdamW", "name": "sgd"}}},
     "keys 'training.optimizer.type' = 'AdamW' and 'training.optimizer.name' = 'sgd' disagree; "
     "write only training.optimizer.name"),
    ({"training": {"local_epochs": 5}, "federated": {"local_epochs": 2}},
     "keys 'training.local_epochs' = 5 and 'federated.local_epochs' = 2 disagree; write only federated.local_epochs"),
])
def test_both_spellings_that_disagree_say_what_to_write(data, message):
    with pytest.raises(ConfigError) as info:
        parse_config(data, "config.toml")
    assert f"config.toml: {message}" in str(info.value)


def test_an_unknown_optimizer_type_names_the_key():
    with pytest.raises(ConfigError, match=r"config.toml: key 'training.optimizer.name': Input should be 'sgd', "
                                          r"'adam' or 'adamw' \(got 'lamb'\)"):
        parse_config({"training": {"optimizer": {"type": "LAMB"}}}, "config.toml")


def test_checkpoint_interval_is_seconds_and_not_negative():
    assert parse_config({}).fault_tolerance.checkpoint_interval == 0.0  # after every round
    with pytest.raises(ConfigError, match="fault_tolerance.checkpoint_interval"):
        parse_config({"fault_tolerance": {"checkpoint_interval": -1}})
