"""An outer optimizer after any aggregator: DiLoCo's outer step (Douillard et al. 2023).

Trainers send Δᵢ = local − global after H inner steps; DiLoCo's *pseudo-gradient* is its
negation, gᵢ = global − local. The strategy's aggregator (a mean, or a robust rule: trimmed
mean, median, Krum, CenteredClip, …) turns the round's Δᵢ into one aggregate Δ̄, and the outer
optimizer moves the global model with it: ``torch.optim.SGD`` on g = −Δ̄ (``optimizers.SGD``,
written on Δ̄), Nesterov momentum at lr 0.7 and μ 0.9 in the paper.

Only aggregators that would apply Δ̄ as is take an outer optimizer; FedAvgM, FedAdam, FedYogi
and FedAdagrad already have their own (``config.py`` refuses the combination). The outer
state (momentum buffer, step) is the strategy's ``optimizer.*`` server state: committed with
its round, restored after a restart, mirrored to the standby.
"""

from __future__ import annotations

from typing import ClassVar

from prime.core.aggregation.composed import ComposedStrategy
from prime.core.aggregation.optimizers import SGD

#: DiLoCo's published outer optimizer: SGD with Nesterov momentum.
DILOCO_LEARNING_RATE = 0.7
DILOCO_MOMENTUM = 0.9


def applies_as_is(strategy: ComposedStrategy) -> bool:
    """Whether ``strategy``'s server step is ``global + Δ̄`` (SGD at lr 1, no momentum)."""
    opt = strategy.optimizer
    return type(opt) is SGD and opt.lr == 1.0 and opt.momentum == 0.0


class OuterOptimized(ComposedStrategy):
    """``strategy``'s aggregator, then ``outer`` instead of applying the aggregate as is."""

    name: ClassVar[str] = "outer"

    def __init__(self, strategy: ComposedStrategy, outer: SGD) -> None:
        if not isinstance(strategy, ComposedStrategy) or not applies_as_is(strategy):
            raise ValueError(f"{getattr(strategy, 'label', strategy)!r} has its own server optimizer; "
                             "an outer optimizer goes after an aggregator that applies its aggregate as is")
        super().__init__(strategy.aggregator, outer)
        self.inner, self.proximal_mu = strategy, strategy.proximal_mu

    @property
    def label(self) -> str:
        return f"{self.inner.label}+outer-sgd"
