"""A trainer process follows only its pinned coordinator, and only fresh announcements.

Broker, DHT node and one trainer run as processes; no coordinator runs. The test
publishes announcements selecting the trainer: one signed by an impostor key, one
signed by the real coordinator key but expired, and a good one carrying an inline
model that does not hash to the signed digest. The trainer must train on none of them
and count each drop in its metrics file.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from prime.bus.client import BusClient
from prime.bus.topics import Topics
from prime.core import parcel
from prime.core.agreement import job_terms, terms_digest
from prime.core.identity import Identity
from prime.core.records import RoundAnnouncement
from prime.demo import LocalNetwork
from prime.tasks import task_of
from prime.telemetry import read_metrics
from tests import factories

pytestmark = pytest.mark.slow


def announcement(net: LocalNetwork, trainer_key: bytes, issued: float, expires: float) -> RoundAnnouncement:
    terms = terms_digest(job_terms(net.config, task_of(net.config).options_dict()))  # the job's real terms
    return factories.announcement(
        job_id=net.config.job_id, round=1, model_version=0, model_size=10, providers=["127.0.0.1:9"],
        selected=[trainer_key], config_digest=terms, deadline=expires, issued=issued, expires=expires, total_rounds=1,
    )


def wait_for_drop(net: LocalNetwork, name: str, reason: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    metrics = None
    while time.monotonic() < deadline:
        metrics = read_metrics(net.trainer_dir(name))
        if metrics and metrics.get("dropped_messages", {}).get(reason):
            return metrics
        assert net.procs[name].poll() is None, net.log_tail(name)
        time.sleep(0.2)
    raise AssertionError(f"trainer never dropped {reason}: {metrics}\n{net.log_tail(name)}")


def test_trainer_refuses_impostor_and_stale_announcements(tmp_path):
    net = LocalNetwork(tmp_path / "net", trainers=1, rounds=1, local_epochs=1, federated={"min_clients": 1})
    name = net.trainer_names[0]
    trainer_key = Identity.load_or_create(net.trainer_dir(name)).public_key
    coordinator = Identity.load_or_create(net.coordinator_dir)  # the real, pinned key
    impostor = Identity.generate("impostor")
    try:
        net.start_infrastructure()
        net.start_trainer(0)
        now = time.time()
        forged = announcement(net, trainer_key, now, now + 30).seal(impostor).to_bytes()
        asyncio.run(publish_retained(net, forged))
        wait_for_drop(net, name, "bad_announce")

        stale = announcement(net, trainer_key, now - 600, now - 300).seal(coordinator).to_bytes()
        asyncio.run(publish_retained(net, stale))
        wait_for_drop(net, name, "expired_RoundAnnouncement")

        swapped = parcel.pack(announcement(net, trainer_key, now, now + 30).seal(coordinator).to_bytes(), b"x" * 10)
        asyncio.run(publish_retained(net, swapped))
        metrics = wait_for_drop(net, name, "bad_inline_model")
        assert "inline" not in metrics["model_fetch"]
        assert metrics["rounds_trained"] == 0 and metrics["last_submitted_round"] == 0
    finally:
        net.stop_all()


async def publish_retained(net: LocalNetwork, payload: bytes) -> None:
    async with BusClient(net.config.network.mqtt_url, "test-publisher") as bus:
        await bus.publish(Topics(net.config.job_id).announce, payload, retain=True)
