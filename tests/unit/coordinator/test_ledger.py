"""Reward ledger hash chain: verifies, and catches tampering, reordering and the wrong key."""

from __future__ import annotations

import dataclasses

import pytest

from prime.coordinator.ledger import GENESIS, LedgerEntry, make_entry, verify_chain
from prime.core.errors import SignatureError
from prime.core.identity import Identity

COORD = Identity.from_seed(b"c" * 32)
OTHER = Identity.from_seed(b"o" * 32)
NODES = [bytes([i]) * 32 for i in range(1, 4)]


def chain(identity: Identity = COORD, n: int = 6) -> list[LedgerEntry]:
    entries, prev = [], GENESIS
    for seq in range(1, n + 1):
        e = make_entry(identity, seq, (seq + 1) // 2, NODES[seq % 3], 1000 * seq, prev)
        entries.append(e)
        prev = e.hash
    return entries


def test_valid_chain_verifies():
    entries = chain()
    verify_chain(entries, COORD.public_key)
    verify_chain([], COORD.public_key)
    assert entries[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(entries, entries[1:]))
    assert all(e.hash == e.computed_hash() and len(e.signature) == 64 for e in entries)


@pytest.mark.parametrize("index", [0, 3, 5])
def test_tampered_amount_detected(index):
    entries = chain()
    entries[index] = dataclasses.replace(entries[index], amount=entries[index].amount + 1)
    with pytest.raises(SignatureError, match=f"entry {index + 1}: contents"):
        verify_chain(entries, COORD.public_key)


@pytest.mark.parametrize("field, value", [("node_key", b"\x09" * 32), ("round", 99)])
def test_tampered_fields_detected(field, value):
    entries = chain()
    entries[2] = dataclasses.replace(entries[2], **{field: value})
    with pytest.raises(SignatureError):
        verify_chain(entries, COORD.public_key)


def test_rehashed_tampered_entry_fails_signature():
    """Recomputing the hash after tampering is not enough: the signature covers the hash."""
    entries = chain()
    forged = dataclasses.replace(entries[-1], amount=10**12)
    entries[-1] = dataclasses.replace(forged, hash=forged.computed_hash())
    with pytest.raises(SignatureError, match="bad signature"):
        verify_chain(entries, COORD.public_key)


def test_reordered_entries_detected():
    entries = chain()
    entries[1], entries[2] = entries[2], entries[1]
    with pytest.raises(SignatureError, match="sequence"):
        verify_chain(entries, COORD.public_key)


def test_dropped_entry_detected():
    entries = chain()
    del entries[2]
    with pytest.raises(SignatureError):
        verify_chain(entries, COORD.public_key)


def test_resequenced_reordering_breaks_link():
    """Swapping entries and fixing up the seq numbers still breaks the previous-hash link."""
    entries = chain()
    a, b = entries[1], entries[2]
    entries[1], entries[2] = dataclasses.replace(b, seq=2), dataclasses.replace(a, seq=3)
    with pytest.raises(SignatureError, match="link|hash"):
        verify_chain(entries, COORD.public_key)


def test_wrong_key_detected():
    with pytest.raises(SignatureError):
        verify_chain(chain(), OTHER.public_key)
    with pytest.raises(SignatureError):
        verify_chain(chain(OTHER), COORD.public_key)


def test_chain_signed_by_another_key_spliced_in():
    mine, theirs = chain(COORD), chain(OTHER)
    with pytest.raises(SignatureError):
        verify_chain(mine[:3] + theirs[3:], COORD.public_key)


def test_validly_signed_entry_with_wrong_link_detected():
    """Even an entry the coordinator really signed breaks the chain if it points at another predecessor
    (a forked or spliced history)."""
    entries = chain()
    e = entries[2]
    entries[2] = make_entry(COORD, e.seq, e.round, e.node_key, e.amount, b"\x11" * 32)
    with pytest.raises(SignatureError, match="entry 3: previous-hash link"):
        verify_chain(entries, COORD.public_key)
