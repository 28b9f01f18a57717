"""``prime``: the umbrella command — ``demo``, ``init``, ``keygen``, ``broker``, ``dht-node``, ``verify``, ``report``,
``manifest``, ``audit``, ``registry``, ``state``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from prime.console import LOG_LEVELS, hostport, hostport_list, run_main, setup_logging
from prime.core.identity import Identity
from prime.observability.endpoint import MetricsEndpoint, add_metrics_arguments, port_number


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

    metrics = MetricsEndpoint(args, "dht", f"{args.listen[0]}:{args.listen[1]}")

    async def run(on_stop) -> int:
        host, port = args.listen
        node = await DHTNode.create(host=host, port=port, bootstrap=args.bootstrap)
        metrics.attach(node)
        stopped = asyncio.Event()
        on_stop(stopped.set)
        print(f"dht node listening on {host}:{port}", flush=True)
        try:
            await stopped.wait()
        finally:
            await node.close()
        return 0

    return run_main(metrics.serving(run))


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


def manifest(args: argparse.Namespace) -> int:
    from prime.manifest_cli import run

    return run(args)


def audit(args: argparse.Namespace) -> int:
    from prime.audit.cli import run

    return run(args)


def registry(args: argparse.Namespace) -> int:
    from prime.coordinator.registry_cli import run

    return run(args)
def init(args: argparse.Namespace) -> int:
    """Keys, job.toml and the exact command of each process of a local network."""
    from prime.core.errors import PrimeError
    from prime.netinit import describe, init_network

    try:
        plan = init_network(args.directory, trainers=args.trainers, task=args.task, rounds=args.rounds,
                            host=args.host, broker_port=args.broker_port, coordinator_port=args.coordinator_port,
                            metrics_port=args.metrics_port, force=args.force)
    except PrimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"job": str(plan.job_file), "commands": plan.command_lines()}) if args.json else describe(plan))
    return 0


def report(args: argparse.Namespace) -> int:
    """An HTML page with PNG charts of what a coordinator's data dir says happened."""
    from prime.core.errors import PrimeError
    from prime.observability.report import write_report

    try:
        page = write_report(args.data_dir, args.out)
    except PrimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(page)
    return 0


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
    add_metrics_arguments(n)
    n.set_defaults(func=dht_node)

    v = sub.add_parser("verify", help="recompute a coordinator's committed updates and report any that do not match")
    from prime.coordinator.verify_cli import add_arguments

    add_arguments(v)
    v.set_defaults(func=verify)

    m = sub.add_parser("manifest", help="build a job manifest (data, task source, seed, versions) or check data "
                                        "against one")
    from prime.manifest_cli import add_arguments as add_manifest_arguments

    add_manifest_arguments(m)
    m.set_defaults(func=manifest)
    from prime.audit.cli import add_arguments as add_audit_arguments

    a = sub.add_parser("audit", help="check a node's signed, hash-chained audit log")
    add_audit_arguments(a)
    a.set_defaults(func=audit)

    from prime.coordinator.registry_cli import add_arguments as add_registry_arguments

    r = sub.add_parser("registry", help="model versions: list, show, diff, export, promote, annotate")
    add_registry_arguments(r)
    r.set_defaults(func=registry)
    i = sub.add_parser("init", help="create keys and job.toml for a local network; print each process's command")
    i.add_argument("directory", type=Path, help="where job.toml and each node's data dir go")
    i.add_argument("--trainers", type=int, required=True)
    i.add_argument("--task", default="digits", help="digits (default) or stdlib-lm")
    i.add_argument("--rounds", type=int, help="rounds to run (default: 20 for digits, 10 for stdlib-lm)")
    i.add_argument("--host", default="127.0.0.1", help="address every process listens on (default 127.0.0.1)")
    i.add_argument("--broker-port", type=port_number, default=1883)
    i.add_argument("--coordinator-port", type=port_number, default=7000)
    i.add_argument("--metrics-port", type=port_number,
                   help="serve /metrics: the coordinator on this port, trainer K on this port + K")
    i.add_argument("--force", action="store_true", help="write job.toml again (keys are always kept)")
    i.add_argument("--json", action="store_true", help="print the job path and commands as one JSON object")
    i.set_defaults(func=init)

    r = sub.add_parser("report", help="write an HTML report with PNG charts of a coordinator's run")
    r.add_argument("--data-dir", type=Path, required=True, help="the coordinator's data dir")
    r.add_argument("--out", type=Path, required=True, help="directory for index.html, the charts and report.json")
    r.set_defaults(func=report)
    s = sub.add_parser("state", help="state keys: keygen, rotate-key (sealed checkpoints and snapshots)")
    from prime.state_cli import add_arguments as add_state_arguments

    add_state_arguments(s)

    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
