"""Control plane over MQTT: topic names, an embedded broker, a client, liveness."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prime.bus.client import BusClient, BusMetrics, BusURL, LastWill, parse_bus_url
from prime.bus.liveness import Heartbeat, HeartbeatRecord, LivenessTracker
from prime.bus.topics import Topics

if TYPE_CHECKING:
    from prime.bus.broker import EmbeddedBroker, run_broker


def __getattr__(name: str) -> Any:
    # The broker pulls in amqtt (~0.1 s of imports); nodes that only connect skip it.
    if name in ("EmbeddedBroker", "run_broker"):
        from prime.bus import broker

        return getattr(broker, name)
    raise AttributeError(f"module 'prime.bus' has no attribute {name!r}")


__all__ = [
    "BusClient",
    "BusMetrics",
    "BusURL",
    "EmbeddedBroker",
    "Heartbeat",
    "HeartbeatRecord",
    "LastWill",
    "LivenessTracker",
    "Topics",
    "parse_bus_url",
    "run_broker",
]
