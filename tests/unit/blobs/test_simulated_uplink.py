"""The link-simulation test hook: PRIME_SIMULATED_UPLINK_MBIT caps a peer's blob uploads."""

from __future__ import annotations

import pytest

from prime.blobs.service import SIMULATED_UPLINK_ENV, simulated_uplink
from prime.core.errors import BlobError


@pytest.mark.parametrize("value, rate", [(None, None), ("", None), ("0", None), ("1000", 125e6), ("100", 12.5e6)])
def test_mbit_per_second_become_bytes_per_second(monkeypatch, value, rate) -> None:
    if value is None:
        monkeypatch.delenv(SIMULATED_UPLINK_ENV, raising=False)
    else:
        monkeypatch.setenv(SIMULATED_UPLINK_ENV, value)
    assert simulated_uplink() == rate


def test_a_bad_value_is_named(monkeypatch) -> None:
    monkeypatch.setenv(SIMULATED_UPLINK_ENV, "fast")
    with pytest.raises(BlobError, match="PRIME_SIMULATED_UPLINK_MBIT='fast'"):
        simulated_uplink()


async def test_a_peer_made_under_the_hook_caps_its_uploads(monkeypatch, tmp_path) -> None:
    from prime.dht.peer import Peer

    monkeypatch.setenv(SIMULATED_UPLINK_ENV, "8")  # 1 MB/s
    peer = await Peer.create(tmp_path, max_blob_bytes=1 << 20)
    try:
        assert peer.blob_server._rate == 1e6
    finally:
        await peer.close()
