"""``prime-coordinator``: run the round daemon, or ``status`` to inspect its data dir."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prime.console import LOG_LEVELS, hostport, hostport_list, run_main, setup_logging
from prime.coordinator.daemon import Coordinator
from prime.coordinator.export import export_merged, export_version
from prime.coordinator.status import format_status, read_status
from prime.core.config import load_config
from prime.core.errors import PrimeError
from prime.observability.endpoint import MetricsEndpoint, add_metrics_arguments
from prime.sealing import resolve_state_key
from prime.tasks.exported import card_path


def status_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="prime-coordinator status", description="Show a coordinator's committed state.")
    p.add_argument("--data-dir", required=True, type=Path)
    p.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    args = p.parse_args(argv)
    try:
        status = read_status(args.data_dir)
    except PrimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def export_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="prime-coordinator export",
                                description="Write a committed model version as safetensors plus a JSON card.")
    p.add_argument("--data-dir", required=True, type=Path)
    p.add_argument("--version", default="latest", help="model version number, or latest (default)")
    p.add_argument("--out", required=True, type=Path, help="weights file to write, e.g. model.safetensors "
                                                              "(with --merge-lora: a model directory)")
    p.add_argument("--merge-lora", action="store_true", help="merge a LoRA job's adapters into its base model and "
                   "write a transformers model directory (from_pretrained loads it)")
    args = p.parse_args(argv)
    try:
        if args.merge_lora:
            card = export_merged(args.data_dir, args.version, args.out)
            print(json.dumps({"directory": str(args.out), **card}, indent=2))
            return 0
        card = export_version(args.data_dir, args.version, args.out)
    except PrimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"weights": str(args.out), "card": str(card_path(args.out)), **card}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["status"]:
        return status_main(argv[1:])
    if argv[:1] == ["export"]:
        return export_main(argv[1:])
    p = argparse.ArgumentParser(
        prog="prime-coordinator",
        description="Run federated rounds. Subcommands: status --data-dir DIR [--json]; "
                    "export --data-dir DIR [--version N|latest] --out model.safetensors.",
    )
    p.add_argument("--config", required=True, type=Path, help="job config (TOML or JSON)")
    p.add_argument("--data-dir", required=True, type=Path, help="state dir: key, SQLite database, model blobs")
    p.add_argument("--listen", type=hostport, default=("127.0.0.1", 7000), help="HOST:PORT for DHT (UDP) and blobs (TCP)")
    p.add_argument("--mqtt-url", help="MQTT broker URL (default: the job config's, else an embedded broker on 127.0.0.1:1883)")
    p.add_argument("--bootstrap", type=hostport_list, default=[], help="extra DHT peers HOST:PORT[,…]")
    p.add_argument("--standby", action="store_true",
                   help="start as a standby: mirror the primary's checkpoints, take over when it dies "
                        "(copy the primary's node.key into this --data-dir)")
    p.add_argument("--data-path", type=Path, help="data directory or file, for tasks that read files "
                                                   "(the held-out validation set comes from it)")
    p.add_argument("--device", default="cpu",
                   help="where the coordinator scores and evaluates updates: cpu (default), cuda or cuda:N "
                        "(large models: the held-out forward passes are most of a round's coordinator work)")
    p.add_argument("--manifest", type=Path, help="the job manifest (prime manifest build): its digest is signed into "
                                                  "every announcement, and trainers whose data differs do not train")
    p.add_argument("--state-key-file", type=Path,
                   help="seal snapshots and server state with this key (0600 file from `prime state keygen`; "
                        "a standby needs the primary's; default: $PRIME_STATE_KEY if set, else plaintext)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    add_metrics_arguments(p)
    args = p.parse_args(argv)
    setup_logging(args.log_level, "standby" if args.standby else "coordinator")
    metrics = MetricsEndpoint(args, "coordinator", "standby" if args.standby else "coordinator")

    async def run(on_stop) -> int:
        config = load_config(args.config)
        coordinator = await Coordinator.create(
            config, data_dir=args.data_dir, listen=args.listen, mqtt_url=args.mqtt_url, bootstrap=args.bootstrap,
            standby=args.standby, data_path=args.data_path, device=args.device, manifest=args.manifest,
            state_key=resolve_state_key(args.state_key_file),
        )
        metrics.attach(coordinator, budget=coordinator.driver.budget.usage)
        on_stop(coordinator.stop)
        try:
            await coordinator.run()
        finally:
            await coordinator.close()
        return 0

    return run_main(metrics.serving(run))


if __name__ == "__main__":
    sys.exit(main())
