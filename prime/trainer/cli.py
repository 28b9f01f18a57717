"""``prime-trainer``: run one trainer node until the job ends.

Under ``torchrun --nproc-per-node N -m prime.trainer.cli …`` the N processes are one node:
rank 0 runs the node (identity, bus, DHT, blobs, checkpoints); the others only train,
following rank 0 (``prime/trainer/ranks.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prime.console import LOG_LEVELS, hostport, hostport_list, run_main, setup_logging
from prime.core.config import JobConfig, load_config
from prime.core.errors import PrimeError
from prime.observability.endpoint import MetricsEndpoint, add_metrics_arguments
from prime.sealing import resolve_state_key
from prime.trainer.distributed import close_process_group, is_leader, leave_torchrun, resolve_device
from prime.trainer.node import TrainerNode


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="prime-trainer", description="Train locally and publish signed updates.")
    p.add_argument("--node-id", required=True, help="human-readable node name, e.g. trainer-001")
    p.add_argument("--config", required=True, type=Path, help="job config (TOML or JSON)")
    p.add_argument("--coordinators", required=True, type=hostport_list, help="HOST:PORT[,HOST:PORT] of coordinators (DHT bootstrap)")
    p.add_argument("--data-dir", type=Path, help="node state dir: key, blobs, checkpoints (default ./prime-data/NODE_ID)")
    p.add_argument("--listen", type=hostport, default=("127.0.0.1", 0), help="HOST:PORT for DHT (UDP) and blobs (TCP)")
    p.add_argument("--mqtt-url", help="MQTT broker URL (default: the job config's, else mqtt://127.0.0.1:1883)")
    p.add_argument("--round", type=int, default=1, help="join from this round (skip earlier ones)")
    p.add_argument("--data-partition", type=int,
                   help="train on this shard only (default: the shard each round's announcement assigns)")
    p.add_argument("--data-path", type=Path, help="data directory or file, for tasks that read files")
    p.add_argument("--device", choices=("cpu", "cuda"), help="where to train (default: the local GPU if any, else cpu)")
    p.add_argument("--state-key-file", type=Path,
                   help="seal checkpoints with this key (0600 file from `prime state keygen`; "
                        "default: $PRIME_STATE_KEY if set, else checkpoints are plaintext)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    add_metrics_arguments(p)
    return p.parse_args(argv)


def follow_rank0(args: argparse.Namespace) -> int:
    """A torchrun rank above 0: build the same engine and take part in what rank 0 leads."""
    from prime.core.aggregation.config import proximal_mu
    from prime.tasks import task_of
    from prime.trainer.engine import LocalEngine

    try:
        config = load_config(args.config)
        engine = LocalEngine(task_of(config), config.training, device=resolve_device(args.device),
                             data_path=args.data_path, proximal_mu=proximal_mu(config.federated.aggregation))
        engine.follow()
    except PrimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        close_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not is_leader():
        setup_logging(args.log_level, f"{args.node_id}/rank")
        return leave_torchrun(follow_rank0(args))
    setup_logging(args.log_level, args.node_id)
    return leave_torchrun(run_node(args))


def run_node(args: argparse.Namespace, node_class: type[TrainerNode] = TrainerNode,
             prepare: Callable[[TrainerNode, JobConfig], dict[str, Any]] | None = None) -> int:
    """Rank 0 (or the only process): the node itself, until the job ends.

    ``node_class`` and ``prepare`` (called once the node exists; what it returns joins the final
    summary line) let a harness run a modified node exactly as ``prime-trainer`` runs one
    (``benchmarks/attackers.py``)."""

    async def run(on_stop) -> int:
        config = load_config(args.config)
        state_key = resolve_state_key(getattr(args, "state_key_file", None))
        node = await node_class.create(
            args.node_id, config, data_dir=args.data_dir or Path("prime-data") / args.node_id,
            coordinators=args.coordinators, mqtt_url=args.mqtt_url, listen=args.listen,
            start_round=args.round, data_partition=args.data_partition, data_path=args.data_path,
            device=args.device, state_key=state_key,
        )
        metrics.attach(node)
        extra = prepare(node, config) if prepare else {}
        on_stop(node.stop)
        try:
            await node.start_training()
            print(json.dumps({**node.get_status(), **node.get_training_metrics(), **extra}), flush=True)
        finally:
            await node.close()
        return 0

    metrics = MetricsEndpoint(args, "trainer", args.node_id)
    try:
        return run_main(metrics.serving(run))
    finally:
        close_process_group()


if __name__ == "__main__":
    sys.exit(main())
