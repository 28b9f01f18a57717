"""Signed envelopes: round trip, domain separation, pinned signer, tamper detection."""

from __future__ import annotations

import pytest

from prime.core import encoding
from prime.core.envelope import Domain, Envelope, open_envelope, seal, signing_digest
from prime.core.errors import DecodeError, SignatureError
from prime.core.identity import Identity

ALICE = Identity.from_seed(b"A" * 32)
BOB = Identity.from_seed(b"B" * 32)
RECORD = {"job_id": "j", "round": 3, "digest": "ab" * 32, "nested": {"x": [1, 2, b"\x00"]}}


def test_seal_open_round_trip():
    env = seal(ALICE, Domain.UPDATE, RECORD)
    assert env.domain == "update" and env.signer == ALICE.public_key
    opened = open_envelope(env.to_bytes(), Domain.UPDATE)
    assert opened == env
    assert opened.record == RECORD
    # the string form of the domain works the same
    assert open_envelope(env.to_bytes(), "update").record == RECORD
    assert seal(ALICE, "update", RECORD) == env


def test_sealing_is_deterministic_and_canonical():
    reordered = dict(reversed(list(RECORD.items())))
    assert seal(ALICE, Domain.UPDATE, RECORD).to_bytes() == seal(ALICE, Domain.UPDATE, reordered).to_bytes()


@pytest.mark.parametrize("other", [d for d in Domain if d is not Domain.UPDATE])
def test_domain_separation(other):
    data = seal(ALICE, Domain.UPDATE, RECORD).to_bytes()
    with pytest.raises(SignatureError, match="domain"):
        open_envelope(data, other)


def test_relabelled_domain_fails_signature():
    """Rewriting the domain field (without re-signing) must not verify under the new domain."""
    env = seal(ALICE, Domain.UPDATE, RECORD)
    forged = Envelope("announce", env.signer, env.payload, env.signature).to_bytes()
    with pytest.raises(SignatureError):
        open_envelope(forged, Domain.ANNOUNCEMENT)


def test_signing_digest_separates_domains():
    assert signing_digest("update", b"p") != signing_digest("announce", b"p")
    assert signing_digest("ab", b"c") != signing_digest("a", b"bc")
    assert len(signing_digest("update", b"")) == 32


def test_pinned_signer_enforced():
    data = seal(ALICE, Domain.ANNOUNCEMENT, RECORD).to_bytes()
    assert open_envelope(data, Domain.ANNOUNCEMENT, signer=ALICE.public_key).signer == ALICE.public_key
    with pytest.raises(SignatureError, match="unexpected key"):
        open_envelope(data, Domain.ANNOUNCEMENT, signer=BOB.public_key)


def test_swapped_signer_fails():
    env = seal(ALICE, Domain.UPDATE, RECORD)
    forged = Envelope(env.domain, BOB.public_key, env.payload, env.signature).to_bytes()
    with pytest.raises(SignatureError):
        open_envelope(forged, Domain.UPDATE)


@pytest.mark.parametrize("field", ["payload", "signature", "signer"])
def test_every_flipped_bit_fails(field):
    env = seal(ALICE, Domain.UPDATE, RECORD)
    original = getattr(env, field)
    for i in range(len(original) * 8):
        mutated = bytearray(original)
        mutated[i // 8] ^= 1 << (i % 8)
        fields = {"domain": env.domain, "signer": env.signer, "payload": env.payload, "signature": env.signature}
        fields[field] = bytes(mutated)
        with pytest.raises(SignatureError):
            open_envelope(Envelope(**fields).to_bytes(), Domain.UPDATE)


def test_every_flipped_bit_of_wire_bytes_fails():
    data = seal(ALICE, Domain.HEARTBEAT, {"n": 1}).to_bytes()
    for i in range(len(data) * 8):
        mutated = bytearray(data)
        mutated[i // 8] ^= 1 << (i % 8)
        with pytest.raises(DecodeError):
            open_envelope(bytes(mutated), Domain.HEARTBEAT)


@pytest.mark.parametrize(
    "obj, match",
    [
        ([1, 2], "not a signed envelope"),
        ({"d": "update", "s": b"x" * 32, "p": b""}, "not a signed envelope"),
        ({"d": "update", "s": b"x" * 32, "p": b"", "g": b"x" * 64, "extra": 1}, "not a signed envelope"),
        ({"d": 1, "s": b"x" * 32, "p": b"", "g": b"x" * 64}, "wrong types"),
        ({"d": "update", "s": "x" * 32, "p": b"", "g": b"x" * 64}, "wrong types"),
        ({"d": "update", "s": b"x" * 31, "p": b"", "g": b"x" * 64}, "wrong length"),
        ({"d": "update", "s": b"x" * 32, "p": b"", "g": b"x" * 65}, "wrong length"),
    ],
)
def test_malformed_envelopes(obj, match):
    with pytest.raises(DecodeError, match=match):
        open_envelope(encoding.pack(obj), Domain.UPDATE)


def test_oversize_envelope_refused():
    env = seal(ALICE, Domain.UPDATE, {"blob": b"x" * 2000})
    with pytest.raises(DecodeError, match="exceeds"):
        open_envelope(env.to_bytes(), Domain.UPDATE, max_bytes=1000)


def test_signature_error_is_decode_error():
    assert issubclass(SignatureError, DecodeError)
