"""Topic names and id validation."""

from __future__ import annotations

import pytest

from prime.bus.topics import Topics, validate_topic


def test_topic_names_live_under_the_job() -> None:
    t = Topics("mnist-1")
    assert t.announce == "prime/mnist-1/announce"
    assert t.updates == "prime/mnist-1/updates"
    assert t.committed == "prime/mnist-1/committed"
    assert t.liveness("ab12") == "prime/mnist-1/liveness/ab12"
    assert t.liveness_all == "prime/mnist-1/liveness/+"


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "job#1", "x\x00y", "tab\tid", "x" * 129])
def test_bad_job_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="job id"):
        Topics(bad)


def test_non_string_job_id_is_refused() -> None:
    with pytest.raises(ValueError):
        Topics(7)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#"])
def test_bad_network_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="network id"):
        Topics("job").liveness(bad)


def test_topics_are_hashable_values() -> None:
    assert Topics("j") == Topics("j") and len({Topics("j"), Topics("j")}) == 1


def test_validate_topic_rules() -> None:
    assert validate_topic("a/b/c") == "a/b/c"
    assert validate_topic("a/+/c", wildcard=True)
    assert validate_topic("a/#", wildcard=True)
    for bad in ["a/+/c", "a/#"]:
        with pytest.raises(ValueError, match="wildcard"):
            validate_topic(bad)
    for bad in ["a/#/c", "a/b#", "a/x+"]:
        with pytest.raises(ValueError):
            validate_topic(bad, wildcard=True)
    with pytest.raises(ValueError):
        validate_topic("")
