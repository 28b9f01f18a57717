"""``prime``: the umbrella command — ``demo``, ``keygen``, ``broker``, ``dht-node``, ``verify``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from prime.console import LOG_LEVELS, hostport, hostport_list, run_main, setup_logging
from prime.core.identity import Identity


def keygen(args: argparse.Namespace) -> int:
    """Create (or reuse) a node key and print its public key for the operator to admit."""
    identity = Identity.load_or_create(args.data_dir, args.name or "")
    info = {"public_key": identity.public_key_hex, "network_id": identity.network_id,
            "key_file": str(Path(args.data_dir) / "node.key")}
    print(json.dumps(info) if args.json else identity.public_key_hex)
    return 0


def broker(args: argparse.Namespace) -> int:
    from prime.bus.broker import run_broker

    setup_logging(args.log_level, "broker")
    run_broker(*args.listen)
    return 0


def dht_node(args: argparse.Namespace) -> int:
    """A bare DHT peer: a stable bootstrap point that stores and serves signed records."""
    from prime.dht.node import DHTNode

    setup_logging(args.log_level, "dht")

    async def run(on_stop) -> int:
        host, port = args.listen
        node = await DHTNode.create(host=host, port=port, bootstrap=args.bootstrap)
        stopped = asyncio.Event()
        on_stop(stopped.set)
        print(f"dht node listening on {host}:{port}", flush=True)
        try:
            await stopped.wait()
        finally:
            await node.close()
        return 0

    return run_main(run)


def demo(args: argparse.Namespace) -> int:
    from prime.demo import run_demo

    if args.rounds is None:
        args.rounds = {"stdlib-lm": 10, "hf-causal-lm-lora": 6}.get(args.task, 20)
    if args.trainers is None:
        args.trainers = 2 if args.task == "hf-causal-lm-lora" else 4  # each loads transformers: 2 cores
    return run_demo(trainers=args.trainers, rounds=args.rounds, workdir=args.workdir, as_json=args.json,
                    local_epochs=args.local_epochs, task=args.task)


def verify(args: argparse.Namespace) -> int:
    from prime.coordinator.verify_cli import run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="prime", description="prime: verifiable federated training.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run a local network: broker, DHT, coordinator and N trainers on one task")
    d.add_argument("--task", default="digits", help="digits (default), stdlib-lm (the tiny byte-level LM) or "
                   "hf-causal-lm-lora (LoRA adapters on a tiny transformers Llama)")
    d.add_argument("--trainers", type=int, help="trainers (default: 4; 2 for hf-causal-lm-lora)")
    d.add_argument("--rounds", type=int, help="rounds to run (default: 20 for digits, 10 for stdlib-lm, "
                   "6 for hf-causal-lm-lora)")
    d.add_argument("--local-epochs", type=int, default=2, help="digits: local epochs per round")
    d.add_argument("--workdir", type=Path, help="where configs, logs, keys and models go (default ./runs/demo-TIME)")
    d.add_argument("--json", action="store_true", help="print only the final summary as one JSON object")
    d.set_defaults(func=demo)

    k = sub.add_parser("keygen", help="create or show a node key; prints the public key to admit")
    k.add_argument("--data-dir", type=Path, required=True)
    k.add_argument("--name", help="human-readable node name")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=keygen)

    b = sub.add_parser("broker", help="run the embedded MQTT broker (loopback only)")
    b.add_argument("--listen", type=hostport, default=("127.0.0.1", 1883))
    b.add_argument("--log-level", choices=LOG_LEVELS, default="warning")
    b.set_defaults(func=broker)

    n = sub.add_parser("dht-node", help="run a bare DHT bootstrap node")
    n.add_argument("--listen", type=hostport, required=True)
    n.add_argument("--bootstrap", type=hostport_list, default=[])
    n.add_argument("--log-level", choices=LOG_LEVELS, default="warning")
    n.set_defaults(func=dht_node)

    v = sub.add_parser("verify", help="recompute a coordinator's committed updates and report any that do not match")
    from prime.coordinator.verify_cli import add_arguments

    add_arguments(v)
    v.set_defaults(func=verify)

    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
