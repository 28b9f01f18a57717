"""Why the coordinator refused an update: one vocabulary for the intake, the store, status and tests.

Each reason is a short string on the wire and in the database (``Refusal`` is a ``str``
enum). ``PENALIZED`` are the reasons that say the *sender* misbehaved: only those lower
its reputation and slash its stake. Reasons that an honest trainer can meet through
timing (a late or early update, another term, a dropped provider) or that do not prove
who sent the bytes (a bad signature names a signer it cannot prove) are refused without
a penalty.
"""

from __future__ import annotations

from enum import Enum


class Refusal(str, Enum):
    # the record alone
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    EXPIRED = "expired"
    FROM_FUTURE = "from_future"
    TTL_TOO_LONG = "ttl_too_long"
    WRONG_JOB = "wrong_job"
    WRONG_ROUND = "wrong_round"
    WRONG_TERM = "wrong_term"
    WRONG_MODEL_VERSION = "wrong_model_version"
    NOT_SELECTED = "not_selected"
    WRONG_SHARD = "wrong_shard"
    #: The record names a codec the job does not use (or the blob's codec parameters differ): a protocol
    #: mismatch, not misbehaviour, so it is not penalized.
    WRONG_CODEC = "wrong_codec"
    OVERSIZE = "oversize"
    NO_SAMPLES = "no_samples"
    TOO_MANY_SAMPLES = "too_many_samples"
    #: A second update for a round the key already has one in: the first counts, so it gains
    #: nothing, and an honest trainer killed between publishing and checkpointing sends one when
    #: it retrains that round after its restart: not penalized.
    DUPLICATE = "duplicate"
    REPLAY = "replay"
    # the blob
    BAD_PROVIDER = "bad_provider"
    BLOB_UNAVAILABLE = "blob_unavailable"
    TAMPERED_BLOB = "tampered_blob"
    SIZE_MISMATCH = "size_mismatch"
    UNDECODABLE = "undecodable"
    WRONG_TENSORS = "wrong_tensors"
    WRONG_SHAPE = "wrong_shape"
    WRONG_DTYPE = "wrong_dtype"
    NOT_FINITE = "not_finite"
    NORM_TOO_LARGE = "norm_too_large"
    # what the update is worth
    EMPTY_UPDATE = "empty_update"
    COPIED_UPDATE = "copied_update"
    UNSCORABLE = "unscorable"
    HARMFUL = "harmful"
    FAILED_SPOT_CHECK = "failed_spot_check"
    OVER_CAPACITY = "over_capacity"
    #: The trainer peaked above ``budget.memory_bytes_per_trainer`` (or did not say): a limit of the job,
    #: not misbehaviour, so it is not penalized.
    OVER_MEMORY_BUDGET = "over_memory_budget"

    def __str__(self) -> str:
        return self.value


#: Only what the signer alone can have done: a replayed record can be re-sent by anyone, and bytes
#: that do not match the signed digest may have been altered in transit, so neither is penalized.
PENALIZED = frozenset({
    Refusal.WRONG_SHARD, Refusal.TOO_MANY_SAMPLES, Refusal.SIZE_MISMATCH, Refusal.UNDECODABLE, Refusal.WRONG_TENSORS, Refusal.WRONG_SHAPE, Refusal.WRONG_DTYPE,
    Refusal.NOT_FINITE, Refusal.NORM_TOO_LARGE, Refusal.EMPTY_UPDATE, Refusal.COPIED_UPDATE, Refusal.UNSCORABLE,
    Refusal.HARMFUL, Refusal.FAILED_SPOT_CHECK,
})
#: Refusals that judge the work itself (its measured worth): these cost the larger harm penalty.
HARM = frozenset({Refusal.HARMFUL, Refusal.FAILED_SPOT_CHECK, Refusal.COPIED_UPDATE, Refusal.EMPTY_UPDATE})
