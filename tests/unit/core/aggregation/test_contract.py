"""The contract every strategy keeps, DP-wrapped ones included.

Reference values come from plain float64 torch in ``helpers.py``; the coordinator's
calls are ``begin``, ``add`` per accepted update, ``finish``; server state round-trips
through ``state_dict`` (and safetensors bytes) exactly.
"""

from __future__ import annotations

import gc
import math
import random
import weakref

import pytest
import safetensors.torch
import torch

from prime.core.aggregation import ComposedStrategy, Contribution, OuterOptimized, Strategy
from tests.unit.core.aggregation.helpers import (
    CASES,
    Case,
    Reference,
    contributions,
    n_updates,
    run_round,
    tensors,
)

ids = [c.id for c in CASES]


def glob0() -> dict[str, torch.Tensor]:
    return tensors(0)


def rounds(case: Case, count: int = 3) -> list[list[Contribution]]:
    return [contributions(r, n_updates(case)) for r in range(count)]


def equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in state.items()}


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_matches_reference_over_rounds(case: Case) -> None:
    strategy, ref = case.make(), Reference(case)
    glob = glob0()
    for contribs in rounds(case):
        result = run_round(strategy, glob, contribs)
        expected, expected_scores = ref.finish(glob, contribs)
        for name in glob:
            assert result.state[name].dtype == glob[name].dtype
            torch.testing.assert_close(result.state[name].double(), expected[name], rtol=1e-5, atol=1e-5)
        assert result.scores.keys() == expected_scores.keys()
        for k, s in expected_scores.items():
            assert result.scores[k] == pytest.approx(s, abs=1e-6)
        glob = result.state


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_arrival_order_does_not_matter(case: Case) -> None:
    results = []
    for seed in (None, 1, 2):
        strategy, glob = case.make(), glob0()
        for contribs in rounds(case, 2):
            order = list(contribs)
            if seed is not None:
                random.Random(seed).shuffle(order)
            result = run_round(strategy, glob, order)
            glob = result.state
        results.append((result, strategy.state_dict()))
    (first, first_state), others = results[0], results[1:]
    for result, state in others:
        assert result.scores == pytest.approx(first.scores, abs=1e-12)
        assert result.dropped == first.dropped
        if case.make().streaming:  # float sums in arrival order: equal up to rounding
            for name in first.state:
                torch.testing.assert_close(result.state[name], first.state[name], rtol=1e-5, atol=1e-6)
        else:
            assert equal_states(result.state, first.state)
            assert equal_states(state, first_state)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_deterministic(case: Case) -> None:
    outs = []
    for _ in range(2):
        strategy, glob = case.make(), glob0()
        for contribs in rounds(case):
            result = run_round(strategy, glob, contribs)
            glob = result.state
        outs.append((result, strategy.state_dict()))
    (a, sa), (b, sb) = outs
    assert equal_states(a.state, b.state) and a.scores == b.scores and a.dropped == b.dropped
    assert equal_states(sa, sb)


class Tripwire(torch.Tensor):
    """A tensor that raises on any torch operation once armed."""

    armed = False

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        def check(x: object) -> None:
            if isinstance(x, Tripwire) and x.armed:
                raise AssertionError(f"a refused or finished update was read ({func})")
        torch.utils._pytree.tree_map(check, (args, kwargs or {}))
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


class TrippedDict(dict):
    """A delta mapping that raises on any access once armed."""

    armed = False

    def _guard(self) -> None:
        if self.armed:
            raise AssertionError("a refused or finished update's mapping was read")

    def __getitem__(self, k):  # noqa: ANN001, ANN204
        self._guard()
        return super().__getitem__(k)

    def __iter__(self):  # noqa: ANN204
        self._guard()
        return super().__iter__()

    def __len__(self) -> int:
        self._guard()
        return super().__len__()

    def keys(self):  # noqa: ANN201
        self._guard()
        return super().keys()

    def items(self):  # noqa: ANN201
        self._guard()
        return super().items()

    def values(self):  # noqa: ANN201
        self._guard()
        return super().values()


def trapped(c: Contribution) -> Contribution:
    delta = TrippedDict({k: torch.Tensor._make_subclass(Tripwire, v) for k, v in c.delta.items()})
    return Contribution(c.contributor, delta, c.num_samples)


def arm(c: Contribution) -> None:
    c.delta.armed = True  # type: ignore[attr-defined]
    for t in dict.values(c.delta):
        t.armed = True


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_updates_not_added_or_already_finished_are_never_read(case: Case) -> None:
    strategy, glob = case.make(), glob0()
    all_rounds = rounds(case)
    reference, ref_glob = case.make(), glob0()
    for r, contribs in enumerate(all_rounds):
        refused = trapped(contributions(50 + r, 2)[0])
        arm(refused)  # the coordinator refused it: never added, must never be touched
        added = [trapped(c) for c in contribs]
        strategy.begin(glob)
        for c in added:
            strategy.add(c)
        result = strategy.finish()
        for c in added:  # finished: the strategy must hold nothing that reads them later
            arm(c)
        glob = result.state
        ref_glob = run_round(reference, ref_glob, contribs).state
        strategy.state_dict()
    assert equal_states({k: v.as_subclass(torch.Tensor) for k, v in glob.items()}, ref_glob)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_no_reference_to_deltas_after_finish(case: Case) -> None:
    strategy, glob = case.make(), glob0()
    for r in range(2):
        contribs = contributions(r, n_updates(case))
        refs = [weakref.ref(t) for c in contribs for t in c.delta.values()]
        result = run_round(strategy, glob, contribs)
        glob = result.state
        del contribs, result
        gc.collect()
        assert all(ref() is None for ref in refs), "the strategy still holds a round's delta"


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_scores_are_shares(case: Case) -> None:
    strategy, glob = case.make(), glob0()
    for contribs in rounds(case):
        result = run_round(strategy, glob, contribs)
        glob = result.state
        assert result.scores.keys() == {c.contributor for c in contribs}
        assert all(math.isfinite(s) and s >= 0 for s in result.scores.values())
        assert all(result.scores[k] == 0.0 for k in result.dropped)
        assert result.dropped == {k for k, s in result.scores.items() if s == 0.0}
        assert sum(result.scores.values()) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_state_dict_round_trip_reproduces_results_exactly(case: Case) -> None:
    original, glob = case.make(), glob0()
    all_rounds = rounds(case, 4)
    for contribs in all_rounds[:2]:
        glob = run_round(original, glob, contribs).state
    saved = safetensors.torch.save(original.state_dict())  # what the coordinator commits
    assert all(isinstance(v, torch.Tensor) for v in original.state_dict().values())
    restored = case.make()
    restored.load_state_dict(safetensors.torch.load(saved))
    assert equal_states(restored.state_dict(), original.state_dict())
    g1 = g2 = glob
    for contribs in all_rounds[2:]:
        a, b = run_round(original, g1, contribs), run_round(restored, g2, contribs)
        assert equal_states(a.state, b.state) and a.scores == b.scores
        g1, g2 = a.state, b.state
    assert equal_states(original.state_dict(), restored.state_dict())


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_abandoned_round_leaves_server_state_unchanged(case: Case) -> None:
    strategy, other, glob = case.make(), case.make(), glob0()
    first, abandoned, second = rounds(case)
    glob = run_round(strategy, glob, first).state
    run_round(other, glob0(), first)
    before = clone(strategy.state_dict())
    strategy.begin(glob)
    for c in abandoned:
        strategy.add(c)
    assert equal_states(strategy.state_dict(), before)
    a = run_round(strategy, glob, second)  # begin again: the abandoned round is gone
    b = run_round(other, glob, second)
    assert equal_states(a.state, b.state) and a.scores == b.scores
    assert equal_states(strategy.state_dict(), other.state_dict())


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_inputs_not_mutated_and_dtype_kept(case: Case) -> None:
    glob = {name: t.to(torch.bfloat16) for name, t in glob0().items()}
    glob["steps"] = torch.tensor([4, 9], dtype=torch.int64)
    contribs = [Contribution(c.contributor, {**c.delta, "steps": torch.tensor([1.0, 2.0])}, c.num_samples)
                for c in contributions(0, n_updates(case))]
    snapshot = clone(glob), [clone(c.delta) for c in contribs]
    result = run_round(case.make(), glob, contribs)
    assert equal_states(glob, snapshot[0])
    assert all(equal_states(c.delta, s) for c, s in zip(contribs, snapshot[1]))
    assert {k: v.dtype for k, v in result.state.items()} == {k: v.dtype for k, v in glob.items()}


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_empty_round_keeps_everything(case: Case) -> None:
    strategy, glob = case.make(), glob0()
    glob = run_round(strategy, glob, contributions(0, n_updates(case))).state
    before = clone(strategy.state_dict())
    strategy.begin(glob)
    result = strategy.finish()
    assert equal_states(result.state, glob) and result.scores == {} and result.dropped == set()
    assert equal_states(strategy.state_dict(), before)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_streaming_flag_and_memory_cap(case: Case) -> None:
    strategy = case.make()
    assert isinstance(strategy, Strategy) and isinstance(strategy, ComposedStrategy)
    assert strategy.streaming is strategy.aggregator.streaming
    wrapper = case.dp is not None or isinstance(strategy, OuterOptimized)  # these derive it from the aggregator
    assert type(strategy).streaming is strategy.streaming or wrapper
    assert (strategy.max_updates is None) == strategy.streaming
    if strategy.streaming:
        return
    cap = strategy.max_updates
    glob = glob0()
    strategy.begin(glob)
    for i in range(cap):
        strategy.add(Contribution(bytes([i % 256, i // 256]), tensors(i), 1))
    over = trapped(Contribution(b"over", tensors(999), 1))
    arm(over)
    with pytest.raises(ValueError, match="max_updates"):
        strategy.add(over)  # refused before anything of it is read


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_misuse_is_refused(case: Case) -> None:
    strategy = case.make()
    c = contributions(0, 1)[0]
    with pytest.raises(RuntimeError):
        strategy.add(c)
    with pytest.raises(RuntimeError):
        strategy.finish()
    strategy.begin(glob0())
    strategy.add(c)
    with pytest.raises(ValueError, match="already"):
        strategy.add(c)
    with pytest.raises(ValueError, match="names"):
        strategy.add(Contribution(b"x", {"w": torch.zeros(2, 3)}, 1))
    with pytest.raises(ValueError, match="shape"):
        strategy.add(Contribution(b"y", {**tensors(1), "b": torch.zeros(4)}, 1))
    with pytest.raises(ValueError, match="strategy"):
        strategy.load_state_dict({**strategy.state_dict(), "strategy": torch.tensor(list(b"other"),
                                                                                    dtype=torch.uint8)})
    with pytest.raises(ValueError, match="unknown"):
        strategy.load_state_dict({**strategy.state_dict(), "optimizer.bogus": torch.tensor(1)})


@pytest.mark.parametrize("case", [c for c in CASES if c.make().requirement().minimum > 1],
                         ids=[c.id for c in CASES if c.make().requirement().minimum > 1])
def test_too_few_updates_raise_and_change_nothing(case: Case) -> None:
    strategy = case.make()
    need = strategy.requirement()
    strategy.begin(glob0())
    for c in contributions(0, need.minimum - 1):
        strategy.add(c)
    before = clone(strategy.state_dict())
    with pytest.raises(ValueError, match="needs"):
        strategy.finish()
    assert equal_states(strategy.state_dict(), before)
