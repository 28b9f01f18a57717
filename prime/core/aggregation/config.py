"""Config models for the aggregation strategies: frozen pydantic v2, unknown keys refused.

:data:`AggregationConfig` is a discriminated union on ``name``. Every model takes an
optional ``dp`` sub-model (central DP around the strategy) and, unless it has its own server
optimizer, an optional ``outer`` one (an outer optimizer after the aggregator: DiLoCo); the
in-memory (robust) ones take ``max_updates``. :func:`build_strategy` makes the strategy a config describes;
:func:`check_min_clients` says, before a job starts, whether ``federated.min_clients``
updates per round are enough for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from prime.core.aggregation.base import Strategy
from prime.core.aggregation.bulyan import Bulyan
from prime.core.aggregation.centeredclip import CenteredClip
from prime.core.aggregation.composed import ComposedStrategy
from prime.core.aggregation.dp import DPAdaptiveClipping, DPFixedClipping
from prime.core.aggregation.fedadagrad import FedAdagrad
from prime.core.aggregation.fedadam import FedAdam
from prime.core.aggregation.fedavg import FedAvg
from prime.core.aggregation.fedavgm import FedAvgM
from prime.core.aggregation.fedmedian import FedMedian
from prime.core.aggregation.fedprox import FedProx
from prime.core.aggregation.fedtrimmedavg import FedTrimmedAvg
from prime.core.aggregation.fedyogi import FedYogi
from prime.core.aggregation.krum import Krum, MultiKrum
from prime.core.aggregation.optimizers import SGD
from prime.core.aggregation.outer import DILOCO_LEARNING_RATE, DILOCO_MOMENTUM, OuterOptimized

Unit = Annotated[float, Field(ge=0.0, lt=1.0)]  # momentum, β₁, β₂
Positive = Annotated[float, Field(gt=0.0)]
MaxUpdates = Annotated[int, Field(ge=1, description="most updates held in memory per round")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DPConfig(_Model):
    """Central DP: clip every update to ``clip_norm`` (the start for adaptive), noise
    multiplier z. ``target_quantile``, ``clip_learning_rate`` and
    ``clipped_count_stddev`` are adaptive clipping's (Andrew et al. 2021)."""

    clipping: Literal["fixed", "adaptive"] = "fixed"
    clip_norm: Positive
    noise_multiplier: float = Field(ge=0.0)
    target_quantile: float | None = Field(None, ge=0.0, le=1.0)
    clip_learning_rate: float | None = Field(None, gt=0.0)
    clipped_count_stddev: float | None = Field(None, gt=0.0)
    #: Noise seed (kept in the server state). None: a random one, drawn once. Keep it secret.
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)

    @model_validator(mode="after")
    def _adaptive_only(self) -> DPConfig:
        if self.clipping == "fixed":
            for key in ("target_quantile", "clip_learning_rate", "clipped_count_stddev"):
                if getattr(self, key) is not None:
                    raise ValueError(f"dp.{key} applies to clipping = 'adaptive' only")
        elif (self.clipped_count_stddev is not None and self.noise_multiplier > 0
              and self.noise_multiplier >= 2 * self.clipped_count_stddev):
            raise ValueError("dp.noise_multiplier must be below 2·dp.clipped_count_stddev")
        return self


class OuterConfig(_Model):
    """The outer optimizer applied to the aggregate (written on Δ̄ = mean of local − global, i.e.
    ``torch.optim.SGD`` on the pseudo-gradient −Δ̄). ``outer = "diloco"`` is DiLoCo's published one:
    SGD, learning_rate 0.7, momentum 0.9, nesterov."""

    name: Literal["sgd"] = "sgd"
    learning_rate: Positive = DILOCO_LEARNING_RATE
    momentum: Unit = DILOCO_MOMENTUM
    nesterov: bool = True

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if data == "diloco":
            return {"name": "sgd", "learning_rate": DILOCO_LEARNING_RATE, "momentum": DILOCO_MOMENTUM,
                    "nesterov": True}
        if isinstance(data, str):
            raise ValueError(f"{data!r} is not a preset; write outer = \"diloco\" or an outer table "
                             "([federated.aggregation.outer])")
        return data

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> OuterConfig:
        if self.nesterov and self.momentum == 0:
            raise ValueError("outer.nesterov needs outer.momentum > 0")
        return self


class _Strategy(_Model):
    #: Names the keys of the strategy's own server optimizer; such a strategy takes no ``outer``.
    own_optimizer: ClassVar[str] = ""
    dp: DPConfig | None = None
    outer: OuterConfig | None = None

    @field_validator("outer")
    @classmethod
    def _no_second_optimizer(cls, outer: OuterConfig | None) -> OuterConfig | None:
        if outer is not None and cls.own_optimizer:
            name = cls.model_fields["name"].default
            raise ValueError(
                f"{name} already applies its own server optimizer ({cls.own_optimizer}); an outer optimizer "
                f"goes after an aggregator that applies its aggregate as is: name = \"fedavg\" (or fedtrimmedavg, "
                f"fedmedian, krum, multikrum, bulyan, centeredclip, fedprox) with outer = \"diloco\"")
        return outer


class FedAvgConfig(_Strategy):
    name: Literal["fedavg"] = "fedavg"


class FedProxConfig(_Strategy):
    name: Literal["fedprox"] = "fedprox"
    proximal_mu: float = Field(0.01, ge=0.0)


class FedAvgMConfig(_Strategy):
    own_optimizer: ClassVar[str] = "server_learning_rate, server_momentum, nesterov"
    name: Literal["fedavgm"] = "fedavgm"
    server_learning_rate: Positive = 1.0
    server_momentum: Unit = 0.9
    nesterov: bool = False

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> FedAvgMConfig:
        if self.nesterov and self.server_momentum == 0:
            raise ValueError("nesterov needs server_momentum > 0")
        return self


class FedAdamConfig(_Strategy):
    own_optimizer: ClassVar[str] = "eta, beta_1, beta_2, tau"
    name: Literal["fedadam"] = "fedadam"
    eta: Positive = 0.1
    beta_1: Unit = 0.9
    beta_2: Unit = 0.99
    tau: Positive = 1e-3
    bias_correction: bool = False


class FedYogiConfig(_Strategy):
    own_optimizer: ClassVar[str] = "eta, beta_1, beta_2, tau"
    name: Literal["fedyogi"] = "fedyogi"
    eta: Positive = 0.01
    beta_1: Unit = 0.9
    beta_2: Unit = 0.99
    tau: Positive = 1e-3


class FedAdagradConfig(_Strategy):
    own_optimizer: ClassVar[str] = "eta, beta_1, tau"
    name: Literal["fedadagrad"] = "fedadagrad"
    eta: Positive = 0.1
    beta_1: Unit = 0.0
    tau: Positive = 1e-3


class FedMedianConfig(_Strategy):
    name: Literal["fedmedian"] = "fedmedian"
    max_updates: MaxUpdates = 64


class FedTrimmedAvgConfig(_Strategy):
    name: Literal["fedtrimmedavg"] = "fedtrimmedavg"
    beta: float = Field(0.2, ge=0.0, lt=0.5)
    max_updates: MaxUpdates = 64


class KrumConfig(_Strategy):
    name: Literal["krum"] = "krum"
    num_malicious: int = Field(0, ge=0)  # f
    max_updates: MaxUpdates = 64


class MultiKrumConfig(_Strategy):
    name: Literal["multikrum"] = "multikrum"
    num_malicious: int = Field(0, ge=0)  # f
    num_selected: int = Field(1, ge=1)  # m
    max_updates: MaxUpdates = 64


class BulyanConfig(_Strategy):
    name: Literal["bulyan"] = "bulyan"
    num_malicious: int = Field(0, ge=0)  # f
    max_updates: MaxUpdates = 64


class CenteredClipConfig(_Strategy):
    name: Literal["centeredclip"] = "centeredclip"
    tau: Positive = 1.0
    iterations: int = Field(3, ge=1)
    init: Literal["previous", "median"] = "previous"
    max_updates: MaxUpdates = 64


AggregationConfig = Annotated[
    Union[FedAvgConfig, FedProxConfig, FedAvgMConfig, FedAdamConfig, FedYogiConfig, FedAdagradConfig,
          FedMedianConfig, FedTrimmedAvgConfig, KrumConfig, MultiKrumConfig, BulyanConfig, CenteredClipConfig],
    Field(discriminator="name"),
]
_ADAPTER: TypeAdapter[AggregationConfig] = TypeAdapter(AggregationConfig)
#: What ``build_strategy`` and friends accept: a model, a mapping of one, a strategy name
#: (defaults), or the old ``AggregationStrategy`` enum (a ``str`` enum).
ConfigLike = Union[AggregationConfig, Mapping[str, Any], str]


def parse_aggregation(data: ConfigLike) -> AggregationConfig:
    """An :data:`AggregationConfig` from a mapping, a model, or a bare strategy name."""
    if isinstance(data, Enum):  # the old ``AggregationStrategy`` enum
        data = data.value
    if isinstance(data, str):
        data = {"name": data}
    if isinstance(data, BaseModel):
        return data  # type: ignore[return-value]
    return _ADAPTER.validate_python(dict(data))


def _bare(config: AggregationConfig) -> ComposedStrategy:
    c = config
    match c:
        case FedAvgConfig():
            return FedAvg()
        case FedProxConfig():
            return FedProx(c.proximal_mu)
        case FedAvgMConfig():
            return FedAvgM(c.server_learning_rate, c.server_momentum, c.nesterov)
        case FedAdamConfig():
            return FedAdam(c.eta, c.beta_1, c.beta_2, c.tau, c.bias_correction)
        case FedYogiConfig():
            return FedYogi(c.eta, c.beta_1, c.beta_2, c.tau)
        case FedAdagradConfig():
            return FedAdagrad(c.eta, c.beta_1, c.tau)
        case FedMedianConfig():
            return FedMedian(c.max_updates)
        case FedTrimmedAvgConfig():
            return FedTrimmedAvg(c.beta, c.max_updates)
        case KrumConfig():
            return Krum(c.num_malicious, c.max_updates)
        case MultiKrumConfig():
            return MultiKrum(c.num_malicious, c.num_selected, c.max_updates)
        case BulyanConfig():
            return Bulyan(c.num_malicious, c.max_updates)
        case CenteredClipConfig():
            return CenteredClip(c.tau, c.iterations, c.init, c.max_updates)
    raise ValueError(f"unknown aggregation config {config!r}")


def build_strategy(config: ConfigLike) -> Strategy:
    """The strategy ``config`` describes: an :data:`AggregationConfig`, a mapping of one,
    a strategy name, or the old ``AggregationStrategy.FEDAVG`` enum value."""
    c = parse_aggregation(config)
    strategy = _bare(c)
    if c.outer is not None:
        strategy = OuterOptimized(strategy, SGD(c.outer.learning_rate, c.outer.momentum, c.outer.nesterov))
    dp = c.dp
    if dp is None:
        return strategy
    if dp.clipping == "fixed":
        return DPFixedClipping(strategy, dp.clip_norm, dp.noise_multiplier, dp.seed)
    return DPAdaptiveClipping(
        strategy, dp.clip_norm, dp.noise_multiplier,
        target_quantile=0.5 if dp.target_quantile is None else dp.target_quantile,
        clip_learning_rate=0.2 if dp.clip_learning_rate is None else dp.clip_learning_rate,
        clipped_count_stddev=dp.clipped_count_stddev, seed=dp.seed)


def proximal_mu(config: ConfigLike) -> float:
    """FedProx's μ for the trainer's proximal term (0 for every other strategy)."""
    return float(getattr(parse_aggregation(config), "proximal_mu", 0.0))


def check_min_clients(config: ConfigLike, min_clients: int, key: str = "federated.min_clients") -> None:
    """Raise ``ValueError`` unless rounds of ``min_clients`` updates suit ``config``."""
    c = parse_aggregation(config)
    strategy = build_strategy(c.model_copy(update={"dp": c.dp.model_copy(update={"seed": 0})})
                              if c.dp is not None else c)
    need = strategy.requirement()
    if min_clients < need.minimum:
        raise ValueError(f"{c.name} needs {need.rule} updates per round; {key} is {min_clients}")
    cap = getattr(c, "max_updates", None)
    if cap is not None and cap < min_clients:
        raise ValueError(f"{c.name} holds at most max_updates = {cap} updates per round in memory; "
                         f"{key} is {min_clients}")
