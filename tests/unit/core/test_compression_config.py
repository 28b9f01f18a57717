"""[compression]: codecs by name with their parameters; bad ones name the key."""

from __future__ import annotations

import pytest

from prime.core.agreement import job_terms, terms_digest
from prime.core.config import dump_toml, parse_config
from prime.core.errors import ConfigError


def test_defaults_are_fp32_both_ways():
    c = parse_config({}).compression
    assert c.update.name == "fp32" and c.model.name == "fp32"


def test_codecs_by_name_or_table_with_defaults():
    c = parse_config({"compression": {"update": "int8", "model": {"name": "bf16"}}}).compression
    assert (c.update.name, c.update.block_size, c.model.name) == ("int8", 256, "bf16")
    c = parse_config({"compression": {"update": {"name": "topk", "fraction": 0.05}}}).compression
    assert (c.update.name, c.update.fraction) == ("topk", 0.05)
    assert parse_config({"compression": {"update": "topk"}}).compression.update.fraction == 0.01


def test_config_round_trips_through_toml(tmp_path):
    from prime.core.config import load_config

    config = parse_config({"compression": {"update": {"name": "int8", "block_size": 64}, "model": "fp16"}})
    path = tmp_path / "job.toml"
    path.write_text(dump_toml(config))
    assert load_config(path) == config


@pytest.mark.parametrize("section, key", [
    ({"update": "int4"}, "compression.update"),
    ({"update": {"name": "topk", "fraction": 0}}, "compression.update.fraction"),
    ({"update": {"name": "topk", "fraction": 1.5}}, "compression.update.fraction"),
    ({"update": {"name": "topk", "fraction": "lots"}}, "compression.update.fraction"),
    ({"update": {"name": "int8", "block_size": 0}}, "compression.update.block_size"),
    ({"model": {"name": "int8", "block_size": 2**25}}, "compression.model.block_size"),
    ({"model": "topk"}, "compression.model"),
])
def test_bad_codecs_name_the_key(section, key):
    with pytest.raises(ConfigError, match=f"job.toml: key '{key}'"):
        parse_config({"compression": section}, "job.toml")


def test_parameters_of_another_codec_are_unknown_keys():
    with pytest.raises(ConfigError, match="unknown key 'compression.update.fraction'"):
        parse_config({"compression": {"update": {"name": "int8", "fraction": 0.1}}}, "job.toml")
    with pytest.raises(ConfigError, match="unknown key 'compression.zlib'"):
        parse_config({"compression": {"zlib": True}}, "job.toml")


def test_codecs_are_agreed_terms():
    base = terms_digest(job_terms(parse_config({}), {}))
    assert terms_digest(job_terms(parse_config({"compression": {"update": "int8"}}), {})) != base
    assert terms_digest(job_terms(parse_config({"compression": {"model": "bf16"}}), {})) != base
    assert terms_digest(job_terms(parse_config({"network": {"enable_compression": True}}), {})) == base
