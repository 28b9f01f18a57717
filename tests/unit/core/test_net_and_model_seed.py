"""Model construction through a task, and address parsing."""

from __future__ import annotations

import pytest
import torch

from prime.core.net import free_port, parse_hostport
from prime.tasks import resolve_task


def test_build_model_deterministic_and_rng_untouched():
    task = resolve_task("digits", {"hidden": [16, 8]})
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = task.build_model(3), task.build_model(3)
    assert torch.equal(torch.random.get_rng_state(), before)
    sa, sb = a.state_dict(), task.build_model(4).state_dict()
    assert all(torch.equal(sa[k], b.state_dict()[k]) for k in sa)
    assert not all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a(torch.zeros(5, 64)).shape == (5, 10)
    assert [tuple(v.shape) for v in sa.values()] == [(16, 64), (16,), (8, 16), (8,), (10, 8), (10,)]


@pytest.mark.parametrize(
    "text, default, expected",
    [("h:80", None, ("h", 80)), ("h", 9, ("h", 9)), (":81", None, ("127.0.0.1", 81)),
     (" 10.0.0.1:65535 ", None, ("10.0.0.1", 65535)), ("[::1]:5", None, ("[::1]", 5))],
)
def test_parse_hostport(text, default, expected):
    assert parse_hostport(text, default) == expected


@pytest.mark.parametrize("text", ["h", "h:0", "h:65536", "h:x", "h:-1"])
def test_parse_hostport_errors(text):
    with pytest.raises(ValueError):
        parse_hostport(text)


def test_free_port():
    port = free_port()
    assert 0 < port < 65536
