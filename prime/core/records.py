"""Typed protocol records: what coordinators and trainers sign and exchange.

Records are plain dicts on the wire (canonical msgpack inside a signed envelope);
these models give them types and refuse anything malformed with ``DecodeError``.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from prime.core import envelope
from prime.core.envelope import Domain, Envelope
from prime.core.errors import DecodeError
from prime.core.identity import Identity

_DIGEST = r"^[0-9a-f]{64}$"
_ADDR = r"^[A-Za-z0-9.\-:\[\]]{1,64}:[0-9]{1,5}$"
_CODEC = r"^[a-z0-9]{1,16}$"
_DEVICE_KIND = r"^[a-z0-9][a-z0-9._-]{0,47}$"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    DOMAIN: ClassVar[Domain]

    @classmethod
    def from_envelope(cls, env: Envelope) -> "_Record":
        try:
            return cls.model_validate(env.record)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise DecodeError(f"malformed {cls.__name__}: {where}: {first['msg']}") from None

    @classmethod
    def open(cls, data: bytes, *, signer: bytes | None = None) -> tuple["_Record", Envelope]:
        """Verify ``data`` as this record type's envelope and decode it."""
        env = envelope.open_envelope(data, cls.DOMAIN, signer=signer)
        return cls.from_envelope(env), env

    def seal(self, identity: Identity) -> Envelope:
        return envelope.seal(identity, self.DOMAIN, self.model_dump())


class RoundAnnouncement(_Record):
    """Coordinator → everyone: round ``round`` starts from model ``model_version``."""

    DOMAIN: ClassVar[Domain] = Domain.ANNOUNCEMENT
    job_id: str = Field(max_length=64)
    #: Leadership term: rises by one each time a standby takes over. Trainers follow the highest.
    term: int = Field(ge=1)
    round: int = Field(ge=1)
    model_version: int = Field(ge=0)
    model_digest: str = Field(pattern=_DIGEST)
    model_size: int = Field(ge=0)
    providers: list[str] = Field(max_length=32)
    selected: list[bytes] = Field(max_length=4096)
    #: The shard of the task's data each selected trainer trains on (``shards[i]`` is ``selected[i]``'s).
    shards: list[int] = Field(max_length=4096)
    num_shards: int = Field(ge=1)
    #: Digest of the job's agreed terms (``prime/core/agreement.py``); trainers with other terms refuse.
    config_digest: str = Field(pattern=_DIGEST)
    #: The codec of the model blob (``compression.model``; ``prime/codecs``): what trainers decode and train from.
    model_codec: str = Field("fp32", pattern=_CODEC)
    deadline: float
    issued: float
    expires: float
    #: Rounds the job runs in total (0: forever); lets trainers know when to stop.
    total_rounds: int = Field(ge=0)
    #: Digest of the job manifest (``prime/core/manifest.py``), served as a blob; None: the job has none.
    manifest_digest: Annotated[str, Field(pattern=_DIGEST)] | None = None

    @model_validator(mode="after")
    def _shard_per_trainer(self) -> "RoundAnnouncement":
        if len(self.shards) != len(self.selected):
            raise ValueError(f"{len(self.shards)} shards for {len(self.selected)} selected trainers")
        if any(not 0 <= s < self.num_shards for s in self.shards):
            raise ValueError(f"a shard index lies outside 0..{self.num_shards - 1}")
        return self

    def shard_of(self, public_key: bytes) -> int | None:
        """The shard this round assigns ``public_key`` (None if it was not selected)."""
        try:
            return self.shards[self.selected.index(public_key)]
        except ValueError:
            return None


class UpdateRecord(_Record):
    """Trainer → coordinator: my update for ``round``, by digest, and where to fetch it."""

    DOMAIN: ClassVar[Domain] = Domain.UPDATE
    job_id: str = Field(max_length=64)
    #: The announcement's term: a coordinator of another term refuses the update.
    term: int = Field(ge=1)
    round: int = Field(ge=1)
    model_version: int = Field(ge=0)
    node_name: str = Field(max_length=64)
    blob_digest: str = Field(pattern=_DIGEST)
    blob_size: int = Field(ge=0)
    #: The codec of the blob (``compression.update``); a coordinator refuses one its job does not use.
    codec: str = Field("fp32", pattern=_CODEC)
    num_samples: int = Field(ge=0)
    #: The shard it trained on, as the announcement assigned; None: the trainer's own data.
    shard: Annotated[int, Field(ge=0)] | None
    metrics: dict[str, float] = Field(max_length=16)
    providers: list[str] = Field(max_length=8)
    issued: float
    expires: float
    #: Budget accounting (``prime/core/budget.py``), measured by the trainer: seconds of local work times
    #: the devices (ranks) that did it, their kind (``cpu``, ``nvidia-h200``) and the peak memory of the
    #: node's rank 0. The coordinator caps the device time by the round's wall time times ``devices``.
    device_seconds: Annotated[float, Field(ge=0.0, le=1e12)] | None = None
    devices: int = Field(1, ge=1, le=65536)
    device_kind: Annotated[str, Field(pattern=_DEVICE_KIND)] | None = None
    peak_memory_bytes: Annotated[int, Field(ge=0, le=1 << 62)] | None = None


class RoundCommitted(_Record):
    """Coordinator → everyone: round ``round`` is committed as ``model_version`` (retained)."""

    DOMAIN: ClassVar[Domain] = Domain.COMMITTED
    job_id: str = Field(max_length=64)
    term: int = Field(ge=1)
    round: int = Field(ge=1)
    model_version: int = Field(ge=1)
    model_digest: str = Field(pattern=_DIGEST)
    #: The coordinator's state after this commit (a SQLite snapshot blob), for standbys to mirror.
    checkpoint_digest: str = Field(pattern=_DIGEST)
    providers: list[str] = Field(max_length=32)
    total_rounds: int = Field(ge=0)
    participants: int = Field(ge=0)
    #: The task's held-out metrics of the committed model (``bits_per_byte``, ``accuracy``, …).
    metrics: dict[str, float] = Field(max_length=16)
    #: The aggregation strategy's server state after this round (a blob), if the strategy keeps any.
    server_state_digest: Annotated[str, Field(pattern=_DIGEST)] | None
    issued: float
    expires: float

    @property
    def job_finished(self) -> bool:
        return self.total_rounds > 0 and self.round >= self.total_rounds


#: How long a committed-round record stays valid (it is retained, and tells late joiners the job ended).
COMMITTED_TTL = 30 * 24 * 3600.0


def freshness_error(issued: float, expires: float, now: float, *, max_skew: float, max_ttl: float) -> str | None:
    """Why a signed record is not fresh (a reason code), or None if it is.

    Every signed record carries when it was issued and when it expires; a record from
    the future (beyond the allowed clock skew), an expired one, or one claiming a longer
    life than its kind allows is refused, which bounds how long a captured record can
    be replayed.
    """
    if issued > now + max_skew:
        return "from_future"
    if expires < now:
        return "expired"
    if expires - issued > max_ttl + max_skew:
        return "ttl_too_long"
    return None


class StandbyStatus(_Record):
    """Standby → primary: I hold your checkpoint up to ``mirrored_round`` (the replication ack)."""

    DOMAIN: ClassVar[Domain] = Domain.STANDBY
    job_id: str = Field(max_length=64)
    term: int = Field(ge=1)
    mirrored_round: int = Field(ge=0)
    issued: float
    expires: float


def dht_checkpoint_name(job_id: str) -> str:
    """DHT name (under the coordinator's key) of the latest checkpoint pointer."""
    return f"{job_id}/checkpoint"


def dht_update_name(job_id: str, round_number: int) -> str:
    """DHT name (under the trainer's own key) of its update record for a round."""
    return f"{job_id}/update/{round_number}"


def dht_announce_name(job_id: str) -> str:
    """DHT name (under the coordinator's key) of the current round announcement."""
    return f"{job_id}/announce"
