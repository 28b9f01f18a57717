"""Which state key a coordinator's state is sealed with, kept in its database's ``meta`` table.

What a coordinator seals (``prime/sealing.py``) are blobs: its snapshots for standbys (served by
digest to anyone who asks, so sealed they are also private on the wire) and its strategy's server
state. The database records the id (a fingerprint, not the key) of the key they are sealed with,
so a coordinator started with a wrong key, or none, stops at once with an error naming the
database, before it writes anything. A standby gets the primary's record with the first snapshot
it restores: it needs the same key, as it needs the same ``node.key``.
"""

from __future__ import annotations

from prime.coordinator.store import CoordinatorStore
from prime.core.errors import StateKeyError
from prime.sealing import HOW_TO_GIVE, StateKey

META_KEY = "state_key_id"


def recorded_key_id(store: CoordinatorStore) -> str | None:
    row = store.db.execute("SELECT value FROM meta WHERE key=?", (META_KEY,)).fetchone()
    return row[0] if row else None


def record_key_id(store: CoordinatorStore, key: StateKey | None) -> None:
    if key is None:
        store.db.execute("DELETE FROM meta WHERE key=?", (META_KEY,))
    else:
        store.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", (META_KEY, key.key_id.hex()))


def bind_state_key(store: CoordinatorStore, key: StateKey | None) -> None:
    """Refuse a key that does not go with this database's sealed state; record it on first use."""
    recorded = recorded_key_id(store)
    where = store.path
    if key is None:
        if recorded is not None:
            raise StateKeyError(f"{where}: this coordinator's state is sealed (key id {recorded}), but no state "
                                f"key is set: give it with {HOW_TO_GIVE}")
        return
    if recorded is None:
        if store.last_committed_round() > 0:
            raise StateKeyError(f"{where}: this coordinator committed rounds without a state key; seal its state "
                                f"first: prime state rotate-key --data-dir {where.parent} --new-key-file FILE")
        record_key_id(store, key)
        return
    if recorded != key.key_id.hex():
        raise StateKeyError(f"{where}: this coordinator's state is sealed with another state key (key id "
                            f"{recorded}); {key.source} has key id {key.key_id.hex()}. Give the key it was sealed "
                            "with (if a key rotation was interrupted, run it again); nothing was changed")
