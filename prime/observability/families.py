"""Prometheus metric families built from a node's live state at scrape time.

Each function turns one part of a node (its blob peer and bus, the coordinator's committed
store and intake, a trainer's last round, a DHT node's storage, the process, the GPU) into
``prometheus_client`` families. Nothing here keeps counters of its own: the node's existing
counters and its SQLite store are the truth, read when Prometheus asks.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from prime.blobs.fetch import received
from prime.core.identity import network_id
from prime.core.rewards import MICRO
from prime.telemetry import current_rss_bytes

#: Upper bounds (seconds) of the round-time histogram's buckets.
ROUND_SECONDS_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

#: Budget usage by limit name: ``{limit: (spent, limit)}``. Budgets are configured elsewhere;
#: until a node is given a source, it reports none.
BudgetSource = Callable[[], dict[str, tuple[float, float]]]


def no_budget() -> dict[str, tuple[float, float]]:
    return {}


def counter(name: str, doc: str, value: float | None = None, labels: Iterable[str] = (),
            samples: Iterable[tuple[Iterable[str], float]] = ()) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, value=value, labels=list(labels) or None)
    for label_values, v in samples:
        family.add_metric(list(label_values), v)
    return family


def gauge(name: str, doc: str, value: float | None = None, labels: Iterable[str] = (),
          samples: Iterable[tuple[Iterable[str], float]] = ()) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, value=value, labels=list(labels) or None)
    for label_values, v in samples:
        family.add_metric(list(label_values), v)
    return family


def info(role: str, node: str) -> Iterator[Metric]:
    yield gauge("prime_node_info", "This process's role and node name (value 1).", labels=("role", "node"),
                samples=[((role, node), 1)])


def process() -> Iterator[Metric]:
    yield gauge("prime_resident_memory_bytes", "Resident set size of this process.", current_rss_bytes())


def gpu_memory() -> Iterator[Metric]:
    """Allocated and reserved CUDA memory per device; no samples where CUDA is not in use."""
    family = gauge("prime_gpu_memory_bytes", "CUDA memory held by this process.", labels=("device", "kind"))
    torch = sys.modules.get("torch")  # never import torch just to report that it is absent
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        for index in range(torch.cuda.device_count()):
            family.add_metric([str(index), "allocated"], torch.cuda.memory_allocated(index))
            family.add_metric([str(index), "reserved"], torch.cuda.memory_reserved(index))
            family.add_metric([str(index), "max_allocated"], torch.cuda.max_memory_allocated(index))
    yield family


def traffic(peer: Any | None, bus: Any | None) -> Iterator[Metric]:
    """Bytes in and out: blob bodies (served, fetched) and bus payloads (published, received)."""
    out, into = [], []
    if peer is not None:
        out.append((["blobs"], peer.blob_server.metrics.bytes_sent))
        into.append((["blobs"], received.total))
    if bus is not None:
        out.append((["bus"], bus.metrics.bytes_published))
        into.append((["bus"], bus.metrics.bytes_received))
    yield counter("prime_bytes_out", "Bytes sent, by channel.", labels=("via",), samples=out)
    yield counter("prime_bytes_in", "Bytes received, by channel.", labels=("via",), samples=into)


def dht(metrics: dict[str, Any]) -> Iterator[Metric]:
    yield gauge("prime_dht_records", "Records this DHT node stores.", metrics.get("records", 0))
    yield gauge("prime_dht_peers", "Contacts in this DHT node's routing table.", metrics.get("peers", 0))
    yield counter("prime_dht_records_accepted", "Records stored after validation.", metrics.get("accepted", 0))
    yield counter("prime_dht_records_refused", "Records refused by validation, by reason.", labels=("reason",),
                  samples=[([r], n) for r, n in sorted(metrics.get("refused", {}).items())])


def committed(db: sqlite3.Connection) -> Iterator[Metric]:
    """Rounds, round time and rewards, from the coordinator's own committed state."""
    seconds = [s for (s,) in db.execute("SELECT seconds FROM rounds ORDER BY round")]
    yield counter("prime_rounds", "Rounds committed.", len(seconds))
    buckets = [(str(bound), sum(s <= bound for s in seconds)) for bound in ROUND_SECONDS_BUCKETS]
    yield HistogramMetricFamily("prime_round_seconds", "Wall time of each committed round.",
                                buckets=[*buckets, ("+Inf", len(seconds))], sum_value=sum(seconds))
    names = dict(db.execute("SELECT node_key, node_name FROM updates GROUP BY node_key"))
    rewards = db.execute("SELECT node_key, SUM(amount) FROM ledger WHERE kind='reward' GROUP BY node_key "
                         "ORDER BY node_key").fetchall()
    yield gauge("prime_reward_tokens", "Tokens credited in the signed ledger, per trainer.", labels=("node", "key"),
                samples=[((names.get(key, ""), network_id(key)), amount / MICRO) for key, amount in rewards])


def intake(metrics: dict[str, Any]) -> Iterator[Metric]:
    yield counter("prime_updates_accepted", "Updates that passed every check (since this process started).",
                  metrics["accepted"])
    yield counter("prime_updates_refused", "Updates refused, by reason (since this process started).",
                  labels=("reason",), samples=[([r], n) for r, n in sorted(metrics["rejected"].items())])


def trainer(status: dict[str, Any], training: dict[str, Any]) -> Iterator[Metric]:
    yield counter("prime_rounds_trained", "Rounds this trainer trained and submitted.", status["rounds_trained"])
    yield gauge("prime_current_round", "Highest round announced to this trainer.", status["current_round"])
    yield gauge("prime_samples_per_second", "Training throughput of the last round, samples per second.",
                training["samples_per_second"])
    yield gauge("prime_tokens_per_second", "Training throughput of the last round, tokens per second "
                "(samples x the task's tokens per sample; 1 for tasks without tokens).", training["tokens_per_second"])
    yield gauge("prime_train_loss", "Mean local training loss of the last round.", training["loss"])


def budget(source: BudgetSource) -> Iterator[Metric]:
    usage = source()
    yield gauge("prime_budget_spend", "Budget spent so far, per limit.", labels=("limit",),
                samples=[([name], spent) for name, (spent, _) in sorted(usage.items())])
    yield gauge("prime_budget_limit", "Budget limit, per limit.", labels=("limit",),
                samples=[([name], limit) for name, (_, limit) in sorted(usage.items())])
