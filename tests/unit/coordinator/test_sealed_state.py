"""A coordinator's database records which state key its sealed state uses: a wrong key, or none,
is one error naming the database, and nothing is written."""

from __future__ import annotations

import pytest

from prime.coordinator import cli
from prime.coordinator.sealed_state import bind_state_key, recorded_key_id
from prime.coordinator.status import DB_NAME
from prime.coordinator.store import AcceptedUpdate, CoordinatorStore, RoundCommit
from prime.core.config import dump_toml, parse_config
from prime.core.errors import StateKeyError
from prime.core.identity import Identity
from prime.sealing import StateKey, write_key_file

KEY = StateKey(bytes(range(32)), "state key file k")
OTHER = StateKey(bytes(range(3, 35)), "state key file wrong")


def test_first_key_is_recorded_then_required(store):
    bind_state_key(store, KEY)
    assert recorded_key_id(store) == KEY.key_id.hex()
    bind_state_key(store, KEY)
    with pytest.raises(StateKeyError, match=rf"{store.path}: .*sealed with another state key \(key id "
                                            rf"{KEY.key_id.hex()}\); state key file wrong has key id"):
        bind_state_key(store, OTHER)
    with pytest.raises(StateKeyError, match=rf"{store.path}: .*sealed .*but no state key is set: give it with "
                                            "--state-key-file"):
        bind_state_key(store, None)
    assert recorded_key_id(store) == KEY.key_id.hex()  # unchanged


def test_plaintext_history_must_be_sealed_first(store, coord, trainers):
    bind_state_key(store, None)  # no key, no record: plaintext as before
    store.record_genesis("00" * 32, 1)
    key = trainers[0].public_key
    store.commit_round(RoundCommit(1, "11" * 32, 1, [AcceptedUpdate(key, "t", "ab" * 32, 1, 1.0)], {key: 1},
                                   {}, 0.1, 1), coord)
    with pytest.raises(StateKeyError, match="committed rounds without a state key; seal its state first: "
                                            "prime state rotate-key"):
        bind_state_key(store, KEY)
    assert recorded_key_id(store) is None


def test_prime_coordinator_with_a_wrong_key_names_the_database_and_changes_nothing(tmp_path, capsys, port_factory):
    data_dir = tmp_path / "coord"
    coordinator = Identity.load_or_create(data_dir, "coordinator")
    trainer = Identity.generate("t1")
    job = tmp_path / "job.toml"
    job.write_text(dump_toml(parse_config({"coordinator_key": coordinator.public_key_hex, "federated": {"min_clients": 1},
                                           "admission": {"trainers": {"t1": trainer.public_key_hex}}})))
    right, wrong = write_key_file(tmp_path / "right.key"), write_key_file(tmp_path / "wrong.key")
    store = CoordinatorStore(data_dir / DB_NAME)
    store.bind_job(parse_config({}).job_id, coordinator.public_key)
    bind_state_key(store, right)
    store.close()
    before = (data_dir / DB_NAME).read_bytes()

    code = cli.main(["--config", str(job), "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port_factory()}",
                     "--state-key-file", str(tmp_path / "wrong.key"), "--log-level", "error"])

    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {data_dir / DB_NAME}: this coordinator's state is sealed with another state key "
                          f"(key id {right.key_id.hex()}); state key file {tmp_path / 'wrong.key'} has key id "
                          f"{wrong.key_id.hex()}"), err
    assert (data_dir / DB_NAME).read_bytes() == before
