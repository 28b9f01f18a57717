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
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from prime.core.aggregation.config import AggregationConfig, FedTrimmedAvgConfig, check_min_clients
from prime.core.budget import BudgetConfig
from prime.core import spellings
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
    """Learning rate per optimizer step: linear warmup, then constant or cosine decay.

    Steps count across rounds (a trainer's step counter is in its checkpoint), so a
    restarted trainer continues the schedule where it stopped."""

    name: SchedulerName = SchedulerName.CONSTANT
    #: Optimizer steps of linear warmup from 0 to ``learning_rate``.
    warmup_steps: int = Field(0, ge=0)
    #: Optimizer steps (after warmup) over which cosine decays to ``eta_min``; held there after.
    t_max: int = Field(100, gt=0)
    eta_min: float = Field(0.0, ge=0.0)


class Precision(str, Enum):
    FP32 = "fp32"
    #: FSDP2 MixedPrecisionPolicy: bf16 parameters in forward/backward, fp32 gradient reduction,
    #: fp32 master weights (the delta a trainer sends is fp32).
    BF16 = "bf16"


class TrainingConfig(_Section):
    #: Samples per micro-batch (sequences for language models) on one node, split evenly across its ranks.
    batch_size: int = Field(32, gt=0)
    #: Micro-batches whose gradients add up to one optimizer step.
    gradient_accumulation: int = Field(1, gt=0)
    learning_rate: float = Field(0.05, gt=0.0)
    #: Local epochs a trainer runs over the whole job; past it the trainer stops taking rounds (0: no limit).
    max_epochs: int = Field(0, ge=0)
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    #: Max global L2 norm of gradients per step (0: no clipping).
    gradient_clipping: float = Field(0.0, ge=0.0)
    precision: Precision = Precision.FP32
    #: Recompute each shard unit's activations in backward (less memory, ~1/3 more compute).
    activation_checkpointing: bool = False
    #: ``torch.compile`` each shard unit (on CUDA; ignored on CPU, where compilation costs more than it saves).
    compile: bool = False
    #: Each round starts from a fresh optimizer, its schedule step and batch order fixed by (job, round,
    #: shard), so a verifier can recompute a trainer's round from public data (``[verification]``).
    reproducible_rounds: bool = False
    seed: int = 0


class FederatedConfig(_Section):
    #: The aggregation strategy and its parameters (``prime/core/aggregation/config.py``). The default,
    #: a coordinate-wise mean trimmed of the top and bottom 20%, is the one ``benchmarks/byzantine.py``
    #: measured within 2 points of the clean run under every attack (README: choosing a strategy).
    aggregation: AggregationConfig = FedTrimmedAvgConfig(beta=0.2)
    #: Local epochs over the trainer's shard per round (ignored when ``local_steps`` is set).
    local_epochs: int = Field(1, gt=0)
    #: Optimizer steps per round (H, as in DiLoCo); 0 trains ``local_epochs`` epochs instead.
    local_steps: int = Field(0, ge=0)
    #: One-step-delayed outer update (streaming/async DiLoCo): once a trainer has sent round r's update
    #: it trains its next H steps from its own weights, and sends that progress as round r+1's update.
    overlap: bool = False
    #: Fraction of live admitted trainers selected each round (at least ``min_clients``).
    participation_rate: float = Field(1.0, gt=0.0, le=1.0)
    min_clients: int = Field(2, gt=0)
    #: Seconds from announcement to deadline.
    round_timeout: float = Field(30.0, gt=0.0)
    #: Rounds the job runs; the coordinator idles after the last one (0: forever).
    rounds: int = Field(20, ge=0)
    #: Tokens credited per committed round, split by measured contribution.
    reward_pool: float = Field(100.0, ge=0.0)

    @model_validator(mode="after")
    def _strategy_fits_min_clients(self) -> "FederatedConfig":
        check_min_clients(self.aggregation, self.min_clients)  # e.g. Krum needs n > 2f + 2
        if self.overlap and not self.local_steps:
            raise ValueError("federated.overlap needs federated.local_steps > 0 (a block of H inner steps)")
        if self.overlap and self.aggregation.name == "fedprox":
            raise ValueError("federated.overlap does not combine with fedprox: its proximal term pulls toward the "
                             "announced global, which an overlapped block does not start from")
        return self


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


class FP32CodecConfig(_Section):
    name: Literal["fp32"] = "fp32"


class FP16CodecConfig(_Section):
    name: Literal["fp16"] = "fp16"


class BF16CodecConfig(_Section):
    name: Literal["bf16"] = "bf16"


class Int8CodecConfig(_Section):
    name: Literal["int8"] = "int8"
    #: Values per float32 scale (blockwise absmax).
    block_size: int = Field(256, ge=1, le=1 << 24)


class UInt8CodecConfig(_Section):
    name: Literal["uint8"] = "uint8"


class TopKCodecConfig(_Section):
    name: Literal["topk"] = "topk"
    #: Share of each tensor's entries sent (the largest by magnitude); the rest is fed back.
    fraction: float = Field(0.01, gt=0.0, le=1.0)


#: A codec by name with its parameters (``prime/codecs``); ``update = "int8"`` is short for ``{ name = "int8" }``.
CodecConfig = Annotated[
    Union[FP32CodecConfig, FP16CodecConfig, BF16CodecConfig, Int8CodecConfig, UInt8CodecConfig, TopKCodecConfig],
    Field(discriminator="name"),
]
CODEC_NAMES = ("fp32", "fp16", "bf16", "int8", "uint8", "topk")


class CompressionConfig(_Section):
    """Codecs: ``update`` for deltas (trainer → coordinator), ``model`` for the global model
    (coordinator → trainers). ``fp32`` (the default) sends what prime always sent.
    ``network.enable_compression`` (zlib, lossless) still applies on top of either codec."""

    update: CodecConfig = FP32CodecConfig()
    model: CodecConfig = FP32CodecConfig()

    @field_validator("update", "model", mode="before")
    @classmethod
    def _bare_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("model")
    @classmethod
    def _whole_model(cls, value: Any) -> Any:
        if value.name == "topk":
            raise ValueError("topk sends a fraction of the entries: a model must arrive whole "
                             "(use fp32, fp16, bf16, int8 or uint8)")
        return value


class FaultToleranceConfig(_Section):
    #: Seconds between a trainer's checkpoints (taken after a round, once this much time has passed since
    #: the last; 0: after every round). The coordinator has no interval: it commits every round.
    checkpoint_interval: float = Field(0.0, ge=0.0)
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
    #: A claimed sample count weighs at most what the round's local work covers when the coordinator
    #: knows it (local steps × batch, or local epochs × a public shard); otherwise at most this many
    #: times the median claim of the last committed round.
    sample_claim_factor: float = Field(2.0, ge=1.0)
    #: Share of a key's remaining stake slashed for each refused or harmful update (``[admission.stakes]``).
    slash_fraction: float = Field(0.1, ge=0.0, le=1.0)


class ScoringConfig(_Section):
    """How the coordinator measures what each update is worth (``prime/coordinator/scoring.py``).

    An update's score is the task's loss on a held-out batch under the global model minus the
    loss with the update applied. Rewards follow positive scores; an update that makes the loss
    worse by more than ``harm_margin`` (relative) is refused as ``harmful``."""

    #: Held-out samples scored per round (the same sampled batch for every update; 0: all of them).
    batch_samples: int = Field(256, ge=0)
    #: Refuse updates that, applied at their share of the round, raise the held-out loss by more
    #: than this fraction of it: a gate against gross sabotage (honest updates of skewed shards
    #: can cost a quarter of a small loss late in training). Subtler harm earns nothing through
    #: the marginal scores, and the robust strategies bound it.
    harm_margin: float = Field(1.0, ge=0.0)


class ReputationConfig(_Section):
    """Per-key standing, kept with each commit: refusals and harm lower it, good work restores it.

    Below ``threshold`` a key is not selected for ``exclusion_rounds`` rounds, doubled on each
    repeat, and comes back at ``threshold``."""

    threshold: float = Field(0.3, ge=0.0, le=1.0)
    refusal_penalty: float = Field(0.3, ge=0.0, le=1.0)
    harm_penalty: float = Field(0.5, ge=0.0, le=1.0)
    recovery: float = Field(0.1, ge=0.0, le=1.0)
    exclusion_rounds: int = Field(2, ge=1)


class VerificationConfig(_Section):
    """Spot checks: the coordinator recomputes a sampled share of trainers' rounds (public-data tasks)."""

    #: Fraction of accepted updates recomputed and compared (0: off). Needs training.reproducible_rounds.
    spot_check_rate: float = Field(0.0, ge=0.0, le=1.0)
    #: Largest relative L2 distance between the recomputed and the submitted delta.
    tolerance: float = Field(1e-3, gt=0.0)


class TaskConfig(_Section):
    """What is trained: a task by name (``prime/tasks/registry.py``) and the task's own options,
    which its options model validates (errors name ``task.options.KEY`` and the file)."""

    #: A built-in task (``digits``, ``stdlib-lm``), ``package.module:attribute``, or a name
    #: published under the ``prime.tasks`` entry-point group.
    name: str = Field("digits", min_length=1, max_length=200)
    options: dict[str, Any] = {}


class DataConfig(_Section):
    """How the task's training data is split among trainers, so no two train on the same shard.

    The coordinator assigns every selected trainer a shard and signs it into the round's
    announcement: ``shards`` when it lists the trainer, else the trainer's position in
    ``[admission.trainers]`` (modulo ``num_shards``)."""

    #: Shards the task's data is cut into; 0: one per admitted trainer.
    num_shards: int = Field(0, ge=0)
    #: Trainer name (as in ``[admission.trainers]``) → shard index.
    shards: dict[str, int] = {}

    @field_validator("shards")
    @classmethod
    def _non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        for name, index in value.items():
            if index < 0:
                raise ValueError(f"trainer {name!r}: shard index must be >= 0")
        return value


class AdmissionConfig(_Section):
    """Which trainer keys may contribute: ``trainers`` maps a name to a public key (hex).

    A closed job (the default) takes updates only from listed keys. An ``open`` job takes
    them from any key, but caps an unlisted key's weight at ``open_max_samples`` and pays
    rewards only to listed keys, so fresh keys buy neither influence nor tokens."""

    trainers: dict[str, str] = {}
    open: bool = False
    open_max_samples: int = Field(1000, gt=0)
    #: Trainer name → tokens staked; refused or harmful work is slashed from it (``security.slash_fraction``).
    stakes: dict[str, float] = {}

    @field_validator("stakes")
    @classmethod
    def _non_negative_stakes(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if amount < 0:
                raise ValueError(f"trainer {name!r}: a stake cannot be negative")
        return value

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


class GatesConfig(_Section):
    """Evaluation gates per registry stage: ``min_<metric>`` / ``max_<metric>`` thresholds on the
    task's held-out metrics (``[gates.staging] min_accuracy = 0.9``). A committed version that
    passes a stage's gates (and those of the stages below it) is promoted to it at commit; a
    promotion by hand needs them too unless forced (``prime/coordinator/gates.py``). The metric
    names are checked against the task's when the coordinator starts."""

    staging: dict[str, float] = {}
    production: dict[str, float] = {}

    @field_validator("staging", "production")
    @classmethod
    def _thresholds(cls, value: dict[str, float]) -> dict[str, float]:
        for key, bound in value.items():
            if not re.fullmatch(r"(min|max)_[A-Za-z0-9_]+", key):
                raise ValueError(f"gate {key!r}: write min_<metric> or max_<metric> (min_accuracy = 0.9)")
            if bound != bound or bound in (float("inf"), float("-inf")):
                raise ValueError(f"gate {key!r}: the threshold must be a finite number")
        return value


class JobConfig(_Section):
    job_id: str = Field("prime-job", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    #: The coordinator's public key (hex); trainers refuse announcements and models it did not sign.
    coordinator_key: str | None = None
    task: TaskConfig = TaskConfig()
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()
    federated: FederatedConfig = FederatedConfig()
    network: NetworkConfig = NetworkConfig()
    compression: CompressionConfig = CompressionConfig()
    fault_tolerance: FaultToleranceConfig = FaultToleranceConfig()
    admission: AdmissionConfig = AdmissionConfig()
    security: SecurityConfig = SecurityConfig()
    scoring: ScoringConfig = ScoringConfig()
    reputation: ReputationConfig = ReputationConfig()
    verification: VerificationConfig = VerificationConfig()
    #: Limits on wall time, rounds, device-hours, cost and trainer memory (``prime/core/budget.py``).
    budget: BudgetConfig = BudgetConfig()
    gates: GatesConfig = GatesConfig()

    @field_validator("coordinator_key")
    @classmethod
    def _hex_key(cls, value: str | None) -> str | None:
        if value is not None and not _HEX_KEY.fullmatch(value):
            raise ValueError("must be 64 hex digits (prime keygen prints it)")
        return value.lower() if value else value

    #: Where this config was read from, for error messages (``job.toml: key …``).
    _source: str = PrivateAttr("<config>")

    @model_validator(mode="before")
    @classmethod
    def _diloco_inner_adamw(cls, data: Any) -> Any:
        """With an outer optimizer (DiLoCo) the inner one is AdamW unless the job names one."""
        if not isinstance(data, dict):
            return data
        federated = data.get("federated")
        aggregation = federated.get("aggregation") if isinstance(federated, dict) else None
        if not isinstance(aggregation, dict) or aggregation.get("outer") is None:
            return data
        training = data.get("training", {})
        optimizer = training.get("optimizer", {}) if isinstance(training, dict) else None
        if isinstance(optimizer, dict) and "name" not in optimizer:
            data = {**data, "training": {**training, "optimizer": {**optimizer, "name": "adamw"}}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "JobConfig":
        n = len(self.admission.trainers)
        if n and not self.admission.open and self.federated.min_clients > n:
            raise ValueError(f"federated.min_clients={self.federated.min_clients} exceeds the {n} admitted trainers")
        unknown = sorted(set(self.data.shards) - set(self.admission.trainers))
        if unknown:
            raise ValueError(f"data.shards names trainers not in [admission.trainers]: {', '.join(unknown)}")
        unknown = sorted(set(self.admission.stakes) - set(self.admission.trainers))
        if unknown:
            raise ValueError(f"admission.stakes names trainers not in [admission.trainers]: {', '.join(unknown)}")
        if self.verification.spot_check_rate > 0 and not self.training.reproducible_rounds:
            raise ValueError("verification.spot_check_rate needs training.reproducible_rounds = true "
                             "(a verifier can only recompute rounds that start from known state)")
        if self.federated.overlap and self.training.reproducible_rounds:
            raise ValueError("federated.overlap does not combine with training.reproducible_rounds: a verifier "
                             "recomputes a round from the announced global model, and an overlapped round "
                             "starts from the trainer's own weights")
        count = self.num_shards
        wide = sorted(name for name, index in self.data.shards.items() if index >= count)
        if wide:
            raise ValueError(f"data.shards: {', '.join(wide)} outside shards 0..{count - 1} (data.num_shards)")
        return self

    @property
    def source(self) -> str:
        return self._source

    def __eq__(self, other: object) -> bool:  # where a config was read from is not part of what it says
        return type(other) is type(self) and self.model_dump() == other.model_dump()

    @property
    def num_shards(self) -> int:
        """Shards the training data is cut into (``data.num_shards``, else one per admitted trainer)."""
        return self.data.num_shards or max(1, len(self.admission.trainers))

    def shard_of(self, public_key: bytes) -> int:
        """The shard the coordinator assigns a trainer: listed in ``data.shards``, else by its
        position in ``[admission.trainers]``; an unlisted key (open jobs) by a hash of the key."""
        names = [name for name, key in self.admission.trainers.items() if key == public_key.hex()]
        if names and names[0] in self.data.shards:
            return self.data.shards[names[0]]
        if names:
            return list(self.admission.trainers).index(names[0]) % self.num_shards
        return int.from_bytes(public_key[:4], "big") % self.num_shards

    @property
    def coordinator_public_key(self) -> bytes | None:
        return bytes.fromhex(self.coordinator_key) if self.coordinator_key else None


def _is_tag(loc: tuple, i: int) -> bool:
    """Whether ``loc[i]`` is a tagged union's tag (``krum`` in ``federated.aggregation.krum.f``)."""
    p = loc[i]
    if not (i and isinstance(p, str) and i + 1 < len(loc)):
        return False
    if loc[i - 1] == "aggregation":
        return p == p.lower() and p.isalpha()
    return i >= 2 and loc[i - 2] == "compression" and loc[i - 1] in ("update", "model") and p in CODEC_NAMES


def _key(loc: tuple) -> str:
    """A dotted key; a tagged union's tag (``federated.aggregation.krum.f``) is not part of the key."""
    parts = [str(p) for i, p in enumerate(loc) if not _is_tag(loc, i)]
    return ".".join(parts) or "(top level)"


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = _key(err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        else:
            lines.append(f"{source}: key '{key}': {err['msg']} (got {err.get('input')!r})")
    return "invalid config\n  " + "\n  ".join(lines)


#: Keys of earlier prime versions, and what to write instead.
_MOVED = {
    ("model",): "the model is the task's: write [task] name = \"digits\" and put hidden/input_dim/num_classes "
                "under [task.options]",
    ("data", "dataset"): "the data set is the task's: write [task] name = \"digits\"",
    ("data", "num_partitions"): "write data.num_shards",
    ("data", "dirichlet_alpha"): "write it under [task.options] (digits task)",
    ("data", "test_fraction"): "write it under [task.options] (digits task)",
    ("data", "seed"): "write split_seed under [task.options] (digits task)",
    ("federated", "aggregation_strategy"): "write [federated.aggregation] name = \"fedavg\" (or another strategy)",
}


def _moved_keys(data: dict[str, Any], source: str) -> list[str]:
    found = []
    for path, advice in _MOVED.items():
        node: Any = data
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            found.append(f"{source}: key '{'.'.join(path)}' is no longer read; {advice}")
    return found


def parse_config(data: dict[str, Any], source: str = "<config>") -> JobConfig:
    """Validate a mapping into a ``JobConfig``; errors name each bad key and the source."""
    data = spellings.normalize(data, source)  # training.optimizer.type = "AdamW", training.local_epochs
    moved = _moved_keys(data, source)
    if moved:
        raise ConfigError("invalid config\n  " + "\n  ".join(moved))
    try:
        config = JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    config._source = source
    return config


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
