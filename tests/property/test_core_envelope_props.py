"""Signed envelopes over generated records: round trip, and no single-byte mutation survives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from prime.core.envelope import Domain, open_envelope, seal
from prime.core.errors import DecodeError
from prime.core.identity import Identity

SIGNER = Identity.from_seed(b"s" * 32)
OTHER = Identity.from_seed(b"o" * 32)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
                    st.text(max_size=16), st.binary(max_size=32))
records = st.recursive(
    scalars,
    lambda c: st.one_of(st.lists(c, max_size=5), st.dictionaries(st.text(max_size=8), c, max_size=5)),
    max_leaves=25,
)
domains = st.sampled_from(list(Domain))


@settings(max_examples=150, deadline=None)
@given(records, domains)
def test_seal_open_round_trip(record, domain):
    env = seal(SIGNER, domain, record)
    opened = open_envelope(env.to_bytes(), domain, signer=SIGNER.public_key)
    assert opened == env
    assert opened.record == record


@settings(max_examples=100, deadline=None)
@given(records, domains, domains)
def test_other_domain_or_signer_refused(record, domain, other):
    data = seal(SIGNER, domain, record).to_bytes()
    if other != domain:
        try:
            open_envelope(data, other)
        except DecodeError:
            pass
        else:
            raise AssertionError("opened under the wrong domain")
    try:
        open_envelope(data, domain, signer=OTHER.public_key)
    except DecodeError:
        pass
    else:
        raise AssertionError("opened with the wrong pinned signer")


@settings(max_examples=300, deadline=None)
@given(records, domains, st.data())
def test_single_byte_mutation_never_opens(record, domain, data):
    sealed = seal(SIGNER, domain, record).to_bytes()
    index = data.draw(st.integers(0, len(sealed) - 1), label="index")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != sealed[index]), label="value")
    mutated = bytearray(sealed)
    mutated[index] = value
    assert bytes(mutated) != sealed
    try:
        env = open_envelope(bytes(mutated), domain)
    except DecodeError:
        return
    raise AssertionError(f"mutated envelope opened: byte {index} -> {value:#x}, record {env.record!r}")
