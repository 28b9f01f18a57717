"""A coordinator's database records which state key its sealed state uses: a wrong key, or none,
is one error naming the database, and nothing is written."""

from __future__ import annotations

import pytest

from prime.coordinator.sealed_state import bind_state_key, recorded_key_id
from prime.coordinator.store import AcceptedUpdate, RoundCommit
from prime.core.errors import StateKeyError
from prime.sealing import StateKey

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
