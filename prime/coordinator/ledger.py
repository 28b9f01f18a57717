"""The ledger's hash chain: each entry commits to the one before it.

Entries are rewards (a round's pool, split by measured contribution), penalties (a
refused or harmful update: reputation lost, amount 0) and slashes (tokens taken from a
key's stake, a negative amount). An entry's hash is SHA-256 of its canonical encoding
(which includes the previous hash); the coordinator signs that hash under the
``ledger`` domain. Anyone holding the coordinator's public key can re-verify the whole
history.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from prime.core import encoding
from prime.core.envelope import Domain, signing_digest
from prime.core.errors import SignatureError
from prime.core.identity import Identity, verify

GENESIS = b"\x00" * 32
KINDS = ("reward", "penalty", "slash")


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    round: int
    node_key: bytes
    amount: int  # micro-tokens (negative for a slash)
    prev_hash: bytes
    hash: bytes = b""
    signature: bytes = b""
    kind: str = "reward"
    reason: str = ""  # why a penalty or slash (a refusal reason)

    def body(self) -> bytes:
        fields = {"seq": self.seq, "round": self.round, "node": self.node_key, "amount": self.amount,
                  "prev": self.prev_hash}
        if self.kind != "reward":  # reward entries hash as they always have
            fields.update(kind=self.kind, reason=self.reason)
        return encoding.pack(fields)

    def computed_hash(self) -> bytes:
        return hashlib.sha256(self.body()).digest()


def make_entry(identity: Identity, seq: int, round_number: int, node_key: bytes, amount: int, prev_hash: bytes,
               kind: str = "reward", reason: str = "") -> LedgerEntry:
    if kind not in KINDS:
        raise ValueError(f"ledger entry kind {kind!r} is not one of {KINDS}")
    draft = LedgerEntry(seq, round_number, node_key, amount, prev_hash, kind=kind, reason=reason)
    digest = draft.computed_hash()
    signature = identity.sign(signing_digest(Domain.LEDGER.value, digest))
    return LedgerEntry(seq, round_number, node_key, amount, prev_hash, digest, signature, kind, reason)


def verify_chain(entries: list[LedgerEntry], coordinator_key: bytes) -> None:
    """Raise ``SignatureError`` at the first entry that breaks the chain or its signature."""
    prev = GENESIS
    for expected_seq, entry in enumerate(entries, start=1):
        if entry.seq != expected_seq:
            raise SignatureError(f"ledger entry {entry.seq}: expected sequence {expected_seq}")
        if entry.prev_hash != prev:
            raise SignatureError(f"ledger entry {entry.seq}: previous-hash link broken")
        if entry.computed_hash() != entry.hash:
            raise SignatureError(f"ledger entry {entry.seq}: contents do not match its hash")
        verify(coordinator_key, signing_digest(Domain.LEDGER.value, entry.hash), entry.signature)
        prev = entry.hash
