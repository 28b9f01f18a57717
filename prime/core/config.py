"""Job and node configuration: frozen pydantic v2 models loaded from TOML or JSON.

Each component owns a small config; ``JobConfig`` only composes them. Unknown keys
and wrong types are errors that name the key and the file, because a typo in a
federated job silently running with defaults wastes everyone's compute.
"""

from __future__ import annotations

import json
import re
import tomllib
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prime.core.errors import ConfigError


_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptimizerName(str, Enum):
    SGD = "sgd"
    ADAM = "adam"
    ADAMW = "adamw"


class SchedulerName(str, Enum):
    CONSTANT = "constant"
    COSINE = "cosine"


class OptimizerConfig(_Section):
    """Local optimizer. ``momentum`` applies to SGD; betas to Adam/AdamW."""

    name: OptimizerName = OptimizerName.SGD
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.999, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)


class SchedulerConfig(_Section):
    """Learning-rate schedule over a trainer's global epoch count (round-deterministic)."""

    name: SchedulerName = SchedulerName.CONSTANT
    t_max: int = Field(100, gt=0)
    eta_min: float = Field(0.0, ge=0.0)


class TrainingConfig(_Section):
    batch_size: int = Field(32, gt=0)
    learning_rate: float = Field(0.05, gt=0.0)
    #: Local epochs a trainer runs over the whole job; past it the trainer stops taking rounds (0: no limit).
    max_epochs: int = Field(0, ge=0)
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    #: Max global L2 norm of gradients per step (0: no clipping).
    gradient_clipping: float = Field(0.0, ge=0.0)
    seed: int = 0


class AggregationStrategy(str, Enum):
    FEDAVG = "fedavg"


class FederatedConfig(_Section):
    aggregation_strategy: AggregationStrategy = AggregationStrategy.FEDAVG
    local_epochs: int = Field(1, gt=0)
    #: Fraction of live admitted trainers selected each round (at least ``min_clients``).
    participation_rate: float = Field(1.0, gt=0.0, le=1.0)
    min_clients: int = Field(2, gt=0)
    #: Seconds from announcement to deadline.
    round_timeout: float = Field(30.0, gt=0.0)
    #: Rounds the job runs; the coordinator idles after the last one (0: forever).
    rounds: int = Field(20, ge=0)
    #: Tokens credited per committed round, split by accepted samples.
    reward_pool: float = Field(100.0, ge=0.0)


class NetworkConfig(_Section):
    #: Seconds before a single network operation (DHT RPC, blob fetch, connect) gives up.
    timeout: float = Field(5.0, gt=0.0)
    #: Largest blob (model or update) a node will accept, in bytes.
    max_message_size: int = Field(256 * 1024 * 1024, gt=0)
    #: zlib-compress update and model blobs on the wire.
    enable_compression: bool = False
    #: Models and updates up to this size ride inside their signed bus message instead of being
    #: fetched over TCP (a round's fastest path for small models); 0 always fetches.
    inline_blob_max_bytes: int = Field(256 * 1024, ge=0, le=16 * 1024 * 1024)
    #: MQTT broker; None means the coordinator embeds one on 127.0.0.1:1883.
    mqtt_url: str | None = None
    #: Seconds between trainer heartbeats.
    heartbeat_interval: float = Field(1.0, gt=0.0)
    #: Models of at least this many bytes are distributed peer-assisted: trainers fetch from
    #: trainers that already hold the model (the coordinator last) and serve their copy in turn,
    #: so the coordinator uploads a few copies per round instead of one per trainer. Smaller
    #: models come straight from the coordinator with no DHT lookups. 0 turns it off.
    peer_assist_min_bytes: int = Field(64 * 1024 * 1024, ge=0)

    def rides_inline(self, blob_size: int) -> bool:
        """Whether a blob of ``blob_size`` bytes travels inside its signed bus message."""
        return blob_size <= self.inline_blob_max_bytes

    def peer_assists(self, model_size: int) -> bool:
        """Whether a model of ``model_size`` bytes is distributed peer-assisted (one riding inline never is)."""
        return 0 < self.peer_assist_min_bytes <= model_size and not self.rides_inline(model_size)


class FaultToleranceConfig(_Section):
    #: Coordinator checkpoints every N committed rounds; trainers every N rounds trained.
    checkpoint_interval: int = Field(1, gt=0)
    max_retries: int = Field(3, ge=0)
    max_checkpoints: int = Field(5, gt=0)


class SecurityConfig(_Section):
    """Freshness windows and bounds every signed record and update must meet."""

    #: Seconds a record's issue time may lie ahead of the receiver's clock.
    max_clock_skew: float = Field(30.0, ge=0.0)
    #: Seconds a signed update record stays valid after it is issued.
    record_ttl: float = Field(600.0, gt=0.0)
    #: Largest L2 norm of an update (local minus global weights); 0 disables the bound.
    max_update_norm: float = Field(1000.0, ge=0.0)
    #: Largest sample count one update may claim (its aggregation weight).
    max_samples_per_update: int = Field(1_000_000, gt=0)


class ModelConfig(_Section):
    """The model every participant builds; only ``mlp`` ships today."""

    name: str = "mlp"
    input_dim: int = Field(64, gt=0)
    hidden: list[int] = [128]
    num_classes: int = Field(10, gt=1)

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value != "mlp":
            raise ValueError(f"unknown model {value!r}; available: 'mlp'")
        return value


class DataConfig(_Section):
    """Which dataset and how it is split across trainers (non-IID Dirichlet over labels)."""

    dataset: str = "digits"
    num_partitions: int = Field(4, gt=0)
    dirichlet_alpha: float = Field(0.5, gt=0.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 0

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value != "digits":
            raise ValueError(f"unknown dataset {value!r}; available: 'digits'")
        return value


class AdmissionConfig(_Section):
    """Which trainer keys may contribute: ``trainers`` maps a name to a public key (hex).

    A closed job (the default) takes updates only from listed keys. An ``open`` job takes
    them from any key, but caps an unlisted key's weight at ``open_max_samples`` and pays
    rewards only to listed keys, so fresh keys buy neither influence nor tokens."""

    trainers: dict[str, str] = {}
    open: bool = False
    open_max_samples: int = Field(1000, gt=0)

    @field_validator("trainers")
    @classmethod
    def _hex_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for name, key in value.items():
            if not _HEX_KEY.fullmatch(key):
                raise ValueError(f"trainer {name!r}: key must be 64 hex digits (prime keygen prints it)")
        return {name: key.lower() for name, key in value.items()}

    def listed(self, public_key: bytes) -> bool:
        return public_key.hex() in self.trainers.values()

    def admits(self, public_key: bytes) -> bool:
        return self.open or self.listed(public_key)

    def weight(self, public_key: bytes, num_samples: int) -> int:
        """Aggregation weight of an update: unlisted keys in open jobs are capped."""
        return num_samples if self.listed(public_key) else min(num_samples, self.open_max_samples)


class JobConfig(_Section):
    job_id: str = Field("prime-job", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    #: The coordinator's public key (hex); trainers refuse announcements and models it did not sign.
    coordinator_key: str | None = None
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()
    federated: FederatedConfig = FederatedConfig()
    network: NetworkConfig = NetworkConfig()
    fault_tolerance: FaultToleranceConfig = FaultToleranceConfig()
    admission: AdmissionConfig = AdmissionConfig()
    security: SecurityConfig = SecurityConfig()

    @field_validator("coordinator_key")
    @classmethod
    def _hex_key(cls, value: str | None) -> str | None:
        if value is not None and not _HEX_KEY.fullmatch(value):
            raise ValueError("must be 64 hex digits (prime keygen prints it)")
        return value.lower() if value else value

    @model_validator(mode="after")
    def _consistent(self) -> "JobConfig":
        n = len(self.admission.trainers)
        if n and not self.admission.open and self.federated.min_clients > n:
            raise ValueError(f"federated.min_clients={self.federated.min_clients} exceeds the {n} admitted trainers")
        return self

    @property
    def coordinator_public_key(self) -> bytes | None:
        return bytes.fromhex(self.coordinator_key) if self.coordinator_key else None


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        else:
            lines.append(f"{source}: key '{key}': {err['msg']} (got {err.get('input')!r})")
    return "invalid config\n  " + "\n  ".join(lines)


def parse_config(data: dict[str, Any], source: str = "<config>") -> JobConfig:
    """Validate a mapping into a ``JobConfig``; errors name each bad key and the source."""
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def load_config(path: str | Path) -> JobConfig:
    """Load a job config from a ``.toml`` or ``.json`` file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read config {path}: not UTF-8 text") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise ConfigError(f"{path}: config must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a table/object")
    return parse_config(data, str(path))


def dump_toml(config: JobConfig) -> str:
    """Write a config back as TOML (used by ``prime demo`` to generate job files)."""
    data = config.model_dump(mode="json", exclude_none=True)
    out: list[str] = []

    def scalar(v: Any) -> str:
        return json.dumps(v)

    def key(k: str) -> str:
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)

    def table(prefix: str, d: dict[str, Any]) -> None:
        plain = {k: v for k, v in d.items() if not isinstance(v, dict)}
        nested = {k: v for k, v in d.items() if isinstance(v, dict)}
        if prefix:
            out.append(f"\n[{prefix}]")
        for k, v in plain.items():
            out.append(f"{key(k)} = {scalar(v)}")
        for k, v in nested.items():
            table(f"{prefix}.{key(k)}" if prefix else key(k), v)

    table("", data)
    return "\n".join(out).lstrip() + "\n"
