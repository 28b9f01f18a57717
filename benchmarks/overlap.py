"""Overlap: compute utilization of DiLoCo trainers with and without ``federated.overlap``, and its quality cost.

A real prime network on 127.0.0.1 (``LocalNetwork``: broker, DHT node, coordinator and N trainers as
processes) trains ``stdlib-lm`` the DiLoCo way (H AdamW inner steps per round; FedAvg then the outer
Nesterov step, lr 0.7, momentum 0.9) for R rounds, once without overlap and once with it, on each link:

- loopback: no cap;
- simulated links (``--links 0,1000,100``: Mbit/s): every process's blob uploads are capped with
  ``PRIME_SIMULATED_UPLINK_MBIT`` (``prime/blobs/service.py``: the ``BlobServer`` upload cap that
  ``benchmarks/broadcast.py`` uses), so the coordinator's model to the trainers and each trainer's
  update to the coordinator move at that rate, and ``network.inline_blob_max_bytes = 0`` makes every
  model and update travel through a capped blob server. Downloads, the MQTT bus and latency are not
  simulated.

Utilization is each trainer's own figure (``metrics.json``: ``utilization``): the step loop's seconds
over the wall seconds from its previous submission to this one, summed over rounds 2..R (round 1 holds
start-up) and over trainers. Quality: the coordinator's held-out bits per byte after round R, overlapped
against not. Trainer checkpoints are off during the run (``checkpoint_interval`` of 1e9 seconds)
in both modes. On CPU every process gets ``OMP_NUM_THREADS=1`` (``--threads``) and ``--pin`` puts the
coordinator, broker and DHT node on core 0 and the trainers on the other cores (``sched_setaffinity``
right after each spawn), as if the coordinator had its own machine: otherwise an overlapped block
would share the cores with the coordinator's scoring and evaluation and slow down by that much. Each
row prints the 1-minute load average at its end (this run's processes included; the machine may be
shared).

    python benchmarks/overlap.py [--rounds 8] [--local-steps 20] [--trainers 2] [--links 0,1000,100]
    python benchmarks/overlap.py --preset 350m --device cuda --trainers 1 --local-steps 100 --rounds 5 \\
        --batch-size 16 --precision bf16 --validation-sequences 4 --set training.compile=true \\
        --set training.learning_rate=0.0006 --set security.max_update_norm=100000   # one H200 (trainer i: GPU i mod count)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prime.blobs.service import SIMULATED_UPLINK_ENV  # noqa: E402
from prime.core.config import dump_toml, parse_config  # noqa: E402
from prime.core.errors import PrimeError  # noqa: E402
from prime.demo import LocalNetwork  # noqa: E402
from prime.telemetry import read_metrics  # noqa: E402


def parse_sets(items: list[str]) -> dict[str, dict]:
    """``--set section.key=json`` overrides (e.g. ``--set compression.update='"int8"'``)."""
    out: dict[str, dict] = {}
    for item in items:
        path, _, raw = item.partition("=")
        section, _, key = path.partition(".")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(section, {})[key] = value
    return out


def job(args: argparse.Namespace, overlap: bool) -> dict:
    sections = {
        "federated": {"overlap": overlap, "aggregation": {"name": "fedavg", "outer": "diloco"},
                      "round_timeout": args.round_timeout},
        "network": {"inline_blob_max_bytes": 0, "timeout": 120.0, "max_message_size": 1 << 34},
        "fault_tolerance": {"checkpoint_interval": 1e9},  # seconds: none during the run
    }
    training = {"precision": args.precision}
    if args.batch_size:
        training["batch_size"] = args.batch_size
    sections["training"] = training
    for section, values in parse_sets(args.set).items():
        sections[section] = {**sections.get(section, {}), **values}
    return sections


def with_options(net: LocalNetwork, options: dict) -> None:
    """Set the task's options in the network's job (LocalNetwork's ``task`` names the demo recipe)."""
    data = net.config.model_dump(mode="json", exclude_none=True)
    data["task"]["options"] = {**data["task"].get("options", {}), **options}
    net.config = parse_config(data, "overlap benchmark job")
    net.config_path.write_text(dump_toml(net.config))


def pin(net: LocalNetwork, names: list[str], cores: set[int]) -> None:
    for name in names:
        proc = net.procs.get(name)
        if proc is not None and proc.poll() is None:
            os.sched_setaffinity(proc.pid, cores)


@contextlib.contextmanager
def visible_gpu(index: int | None):
    """CUDA_VISIBLE_DEVICES for the processes spawned inside (None: leave it as it is)."""
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    if index is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved


def start_trainers(net: LocalNetwork, device: str) -> None:
    """Trainer i on GPU i mod the GPUs visible (on cuda)."""
    gpus = 0
    if device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
    for i in range(len(net.trainer_names)):
        with visible_gpu(i % gpus if gpus else None):
            net.start_trainer(i, "--device", device)


def run(args: argparse.Namespace, mbit: float, overlap: bool, workdir: Path) -> dict:
    if mbit > 0:
        os.environ[SIMULATED_UPLINK_ENV] = str(mbit)
    else:
        os.environ.pop(SIMULATED_UPLINK_ENV, None)
    started = time.monotonic()
    net = LocalNetwork(workdir, args.trainers, args.rounds, task="stdlib-lm", local_steps=args.local_steps,
                       **job(args, overlap))
    with_options(net, {"preset": args.preset, "validation_sequences": args.validation_sequences})
    try:
        cores = sorted(os.sched_getaffinity(0)) if args.pin else []
        net.start_infrastructure()
        net.start_coordinator("--device", args.coordinator_device or args.device)
        if len(cores) >= 2:
            pin(net, ["broker", "dht", "coordinator"], {cores[0]})
        start_trainers(net, args.device)
        if len(cores) >= 2:
            for i, name in enumerate(net.trainer_names):
                pin(net, [name], {cores[1 + i % (len(cores) - 1)]})
        try:
            status = net.wait_for_rounds(args.rounds, args.timeout)
        except PrimeError as exc:
            raise SystemExit(str(exc)) from None
        wall = time.monotonic() - started
        time.sleep(1.5)  # metrics.json is rewritten every second
        trainers = [read_metrics(net.trainer_dir(name)) or {} for name in net.trainer_names]
        coordinator = read_metrics(net.coordinator_dir) or {}
    finally:
        net.stop_all()
        os.environ.pop(SIMULATED_UPLINK_ENV, None)
        if args.logs:  # the phase lines of every round (trainer: fetch/decode/train/encode; coordinator: commit)
            shutil.copytree(net.logs, Path(args.logs) / f"{mbit:.0f}mbit-{'on' if overlap else 'off'}",
                            dirs_exist_ok=True)
    steady = [r for m in trainers for r in m.get("utilization", {}).get("rounds", []) if r["round"] >= 2]
    inner, spent = sum(r["inner_seconds"] for r in steady), sum(r["wall_seconds"] for r in steady)
    sent = [m.get("blob_server", {}).get("bytes_sent", 0) for m in trainers]
    timings = [r.get("timings") or {} for r in status["rounds"][1:]] or [{}]
    return {
        "link_mbit": mbit, "overlap": overlap, "rounds": args.rounds,
        "utilization": inner / spent if spent else 0.0,
        "utilization_per_trainer": [m.get("utilization", {}).get("fraction", 0.0) for m in trainers],
        "seconds_per_round": spent / max(1, len(steady)),
        "inner_seconds_per_round": inner / max(1, len(steady)),
        "blocks_sent": sum(m.get("overlap", {}).get("blocks_sent", 0) for m in trainers),
        "final_metrics": status["rounds"][-1]["metrics"],
        "rejected_updates": len(status["rejected_updates"]),
        "trainer_bytes_sent_per_round": sum(sent) / len(sent) / args.rounds if sent else 0,
        "coordinator_bytes_sent_per_round": coordinator.get("blob_server", {}).get("bytes_sent", 0) / args.rounds,
        "wall_seconds": wall,
        # the coordinator's held-out forward passes per round (rounds 2..R), on --coordinator-device
        "coordinator_scoring_s": sum(t.get("scoring_s", 0.0) for t in timings) / len(timings),
        "coordinator_evaluate_s": sum(t.get("evaluate_s", 0.0) for t in timings) / len(timings),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", help="stdlib-lm preset (tiny, 125m, 350m, 1b)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--coordinator-device", choices=("cpu", "cuda"),
                   help="where the coordinator scores and evaluates (default: --device)")
    p.add_argument("--trainers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--local-steps", type=int, default=20, help="H inner steps per round")
    p.add_argument("--links", default="0,1000,100", help="Mbit/s per upload, comma-separated; 0 is loopback")
    p.add_argument("--batch-size", type=int, help="sequences per micro-batch (default: the demo's, 16)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--validation-sequences", type=int, default=128,
                   help="held-out windows the coordinator evaluates and scores on (on --coordinator-device)")
    p.add_argument("--round-timeout", type=float, default=900.0)
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    p.add_argument("--pin", action=argparse.BooleanOptionalAction, default=None,
                   help="coordinator on core 0, trainers on the others (default: on for cpu)")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS of every process (default: 1 on cpu, unset on cuda)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=JSON", help="any other job key")
    p.add_argument("--modes", default="off,on", help="overlap modes to run, comma-separated: off, on or both")
    p.add_argument("--logs", metavar="DIR", help="copy every run's process logs under DIR")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    modes = [{"off": False, "on": True}[m] for m in args.modes.split(",")]
    links = [float(x) for x in args.links.split(",")]
    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else 0)
    args.pin = args.device == "cpu" if args.pin is None else args.pin
    if threads:  # the spawned processes inherit it: one intra-op thread each, so they do not oversubscribe
        os.environ["OMP_NUM_THREADS"] = str(threads)
    print(f"overlap: stdlib-lm {args.preset} on {args.device} (coordinator on {args.coordinator_device or args.device}), "
          f"{args.trainers} trainers, {args.rounds} rounds x "
          f"H = {args.local_steps}, aggregation {json.dumps(job(args, False)['federated']['aggregation'])}, OMP_NUM_THREADS "
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, pinned {'yes' if args.pin else 'no'}, cores "
          f"{len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"  {'link':>10} {'overlap':>7} {'util':>6} {'s/round':>8} {'inner s':>8} {'bits/byte':>9} "
          f"{'MB up/trainer/round':>19} {'wall s':>7} {'load':>5}", flush=True)
    results = []
    for mbit in links:
        for overlap in modes:
            with tempfile.TemporaryDirectory(prefix="prime-overlap-") as tmp:
                r = run(args, mbit, overlap, Path(tmp))
            r["load_average"] = os.getloadavg()[0]
            results.append(r)
            link = f"{mbit:.0f} Mbit/s" if mbit > 0 else "loopback"
            print(f"  {link:>10} {'on' if overlap else 'off':>7} {r['utilization']:>6.1%} "
                  f"{r['seconds_per_round']:>8.2f} {r['inner_seconds_per_round']:>8.2f} "
                  f"{r['final_metrics'].get('bits_per_byte', float('nan')):>9.4f} "
                  f"{r['trainer_bytes_sent_per_round'] / 1e6:>19.3f} {r['wall_seconds']:>7.1f} {r['load_average']:>5.2f}"
                  f"   (coordinator per round: scoring {r['coordinator_scoring_s']:.2f}s, "
                  f"evaluation {r['coordinator_evaluate_s']:.2f}s)", flush=True)
    for mbit in links if len(modes) == 2 else ():
        off, on = (next(r for r in results if r["link_mbit"] == mbit and r["overlap"] is o) for o in (False, True))
        link = f"{mbit:.0f} Mbit/s" if mbit > 0 else "loopback"
        bpb_off, bpb_on = off["final_metrics"].get("bits_per_byte"), on["final_metrics"].get("bits_per_byte")
        cost = f"{bpb_on / bpb_off - 1:+.2%}" if bpb_off and bpb_on else "n/a"
        print(f"{link}: utilization {off['utilization']:.1%} -> {on['utilization']:.1%} with overlap "
              f"({on['utilization'] / off['utilization']:.2f}x); bits per byte after {args.rounds} rounds "
              f"{bpb_off:.4f} -> {bpb_on:.4f} ({cost})", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
