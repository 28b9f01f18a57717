"""One run of ``benchmarks/multi_gpu.py`` at N ranks: what each rank of ``torchrun --nproc-per-node N`` runs.

The ranks are one trainer node, run the way ``prime-trainer`` runs one: every rank builds the job's
``LocalEngine`` (FSDP2 over the N ranks, bf16 through ``training.precision``, compiled blocks through
``training.compile``); ranks above 0 wait in ``LocalEngine.follow()`` while rank 0 leads. Rank 0 trains
rounds of ``--steps`` steps from the same start state with ``LocalEngine.train`` (state load, step
loop, gather for the delta: each timed by the engine itself), after a warm-up round. Then every rank
reports its peak memory (training's, and apart the model build's) to rank 0, and with ``--pipeline``
rank 0 passes the last delta through the update path (:func:`update_pipeline`). Rank 0 writes what it
measured to ``--result`` as JSON; the launcher does the arithmetic and the printing.

    torchrun --standalone --nproc-per-node 2 benchmarks/multi_gpu_worker.py --device cpu --preset tiny \\
        --batch 4 --result /tmp/r.json        # by hand; benchmarks/multi_gpu.py launches it
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from benchmarks.update_pipeline import Laps  # noqa: E402
from prime import codecs  # noqa: E402
from prime.blobs.store import BlobStore  # noqa: E402
from prime.coordinator.verification import check_record, check_tensors  # noqa: E402
from prime.core import tensors  # noqa: E402
from prime.core.config import JobConfig, parse_config  # noqa: E402
from prime.core.identity import Identity  # noqa: E402
from prime.core.offload import state_bytes  # noqa: E402
from prime.core.records import RoundAnnouncement, UpdateRecord  # noqa: E402
from prime.tasks import task_of  # noqa: E402
from prime.tasks.stdlib_lm import model_config  # noqa: E402
from prime.tasks.transformer import flops_per_token  # noqa: E402
from prime.telemetry import peak_rss_bytes  # noqa: E402
from prime.trainer.budget import device_kind, reset_peak  # noqa: E402
from prime.trainer.distributed import close_process_group, is_leader, leave_torchrun, resolve_device  # noqa: E402
from prime.trainer.engine import LocalEngine, LocalWork, StateDict, TrainMetrics  # noqa: E402

JOB_ID = "multi-gpu-bench"
#: The update-norm bound of the pipeline's job: a job's own choice (the default, 1000, is for small
#: models); the check itself still runs over every value.
MAX_UPDATE_NORM = 1e6


def job(preset: str, seq_len: int | None, per_gpu_batch: int, world_size: int, *, precision: str = "bf16",
        compile: bool = True, activation_checkpointing: bool = False) -> dict[str, Any]:
    """The benchmark's job: ``stdlib-lm`` at ``preset``, AdamW as in local_step.py. The node's micro-batch
    is ``per_gpu_batch`` sequences per rank (weak scaling: constant work per GPU)."""
    options: dict[str, Any] = {"preset": preset}
    if seq_len:
        options["seq_len"] = seq_len
    return {
        "job_id": JOB_ID,
        "task": {"name": "stdlib-lm", "options": options},
        "training": {"batch_size": per_gpu_batch * world_size, "learning_rate": 3e-4, "precision": precision,
                     "compile": compile, "activation_checkpointing": activation_checkpointing,
                     "optimizer": {"name": "adamw", "beta2": 0.95}},
    }


def pipeline_config(base: dict[str, Any], codec: str, trainer_key: str, blob_bound: int) -> JobConfig:
    """The job as its coordinator sees it: this node admitted, the update codec, blobs up to ``blob_bound``."""
    return parse_config({**base, "compression": {"update": codec},
                         "network": {"max_message_size": blob_bound},
                         "security": {"max_update_norm": MAX_UPDATE_NORM}, "federated": {"min_clients": 1},
                         "admission": {"trainers": {"multi-gpu-node": trainer_key}}}, "multi_gpu pipeline job")


def update_pipeline(delta: StateDict, reference: StateDict, config: JobConfig, identity: Identity, workdir: Path,
                    *, num_samples: int, devices: int, kind: str, peak: int) -> dict[str, Any]:
    """Send ``delta`` (trained from ``reference``) down the update path, stage by stage, with the functions
    the trainer node and the coordinator's intake call: encode in the job's update codec, store (digest),
    sign an ``UpdateRecord``; open the envelope (signature), ``check_record``, read the blob back and
    verify its digest, ``codecs.open_update`` and decode, ``check_tensors``. One process and one disk:
    the coordinator's TCP fetch is replaced by reading the blob back (``update_pipeline.py`` measures
    the transfer). Raises ``UpdateRejected`` if the coordinator side would refuse the update."""
    codec = codecs.from_config(config.compression.update)
    lap = Laps()

    store = BlobStore(workdir / "blobs")
    parts = codecs.encode(codec, delta, compress=config.network.enable_compression)
    lap("encode")
    digest = store.put_parts(parts)
    size = tensors.parts_size(parts)
    del parts
    lap("digest+store")
    now = time.time()
    record = UpdateRecord(job_id=config.job_id, term=1, round=1, model_version=0, node_name="multi-gpu-node",
                          blob_digest=digest, blob_size=size, codec=codec.name, num_samples=num_samples, shard=0,
                          metrics={}, providers=["127.0.0.1:1"], issued=now, expires=now + config.security.record_ttl,
                          devices=devices, device_kind=kind, peak_memory_bytes=peak)
    payload = record.seal(identity).to_bytes()
    lap("sign")
    # -- the coordinator's side (prime/coordinator/intake.py) --
    received, envelope = UpdateRecord.open(payload)
    lap("verify_signature")
    announcement = RoundAnnouncement(  # the open round this update answers; digests are not checked here
        job_id=config.job_id, term=1, round=1, model_version=0, model_digest="0" * 64, model_size=0,
        providers=["127.0.0.1:1"], selected=[identity.public_key], shards=[0], num_shards=1,
        config_digest="0" * 64, deadline=now + 600, issued=now, expires=now + 600, total_rounds=1)
    check_record(received, envelope.signer, config, announcement, time.time())
    lap("check_record")
    data = store.map_private(received.blob_digest)  # re-hashed against the signed digest
    lap("read+verify_digest")
    update = codecs.open_update(data, max_bytes=config.network.max_message_size,
                                max_decoded_bytes=state_bytes(reference), expect=codec)
    decoded = update.decoded()
    lap("decode")
    check_tensors(decoded, reference, config.security.max_update_norm)
    lap("check_tensors")
    # per tensor in fp32 (one temporary each; 8B: no float64 copies), summed in Python floats
    squares = sum(float(torch.linalg.vector_norm(decoded[k] - delta[k])) ** 2 for k in delta)
    norm = math.sqrt(sum(float(torch.linalg.vector_norm(v)) ** 2 for v in delta.values()))
    seconds = lap.seconds
    return {"codec": codec.describe(), "fp32_bytes": state_bytes(delta), "blob_bytes": size,
            "seconds": seconds, "total_s": sum(seconds.values()),
            "trainer_s": sum(seconds[k] for k in ("encode", "digest+store", "sign")),
            "relative_error": math.sqrt(squares) / norm if norm else 0.0, "accepted": True}


def device_peak(device: torch.device) -> int:
    """The allocator's peak on this rank's GPU since its last reset (0 on CPU)."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def gather_peaks(device: torch.device, world_size: int, build_peak: int) -> list[list[int]]:
    """Every rank's (training peak, model build peak, host peak resident set) in bytes, on every rank
    (a CPU tensor: Gloo carries it beside NCCL)."""
    mine = torch.tensor([device_peak(device), build_peak, peak_rss_bytes()], dtype=torch.int64)
    if world_size == 1:
        return [mine.tolist()]
    every = [torch.zeros_like(mine) for _ in range(world_size)]
    dist.all_gather(every, mine)
    return [t.tolist() for t in every]


def lead(engine: LocalEngine, start: StateDict, args: argparse.Namespace) -> tuple[dict[str, Any], StateDict]:
    """Rank 0: a warm-up round, then ``--repeats`` timed rounds from ``start``; medians, and the last delta."""
    engine.use_shard(0, 1)
    engine.train(start, LocalWork(steps=args.warmup))  # compile, allocator, communicators
    runs: list[TrainMetrics] = []
    delta: StateDict = {}
    for _ in range(args.repeats):
        delta = {}  # drop the previous round's delta before the next is gathered (8B: 31 GB)
        delta, metrics = engine.train(start, LocalWork(steps=args.steps))
        runs.append(metrics)
        print(f"  rank 0: {metrics.steps} steps in {metrics.seconds:.2f}s ({metrics.tokens_per_second:,.0f} tok/s), "
              f"load {metrics.load_seconds:.2f}s, gather {metrics.gather_seconds:.2f}s, loss {metrics.loss:.4f}",
              flush=True)
    median = statistics.median
    result = {
        "step_s": median(m.seconds for m in runs) / args.steps,
        "tokens_per_s": median(m.tokens_per_second for m in runs),
        "load_s": median(m.load_seconds for m in runs),
        "gather_s": median(m.gather_seconds for m in runs),
        "loss": runs[-1].loss, "samples_per_round": runs[-1].num_samples,
        "runs": [{"seconds": m.seconds, "tokens_per_s": m.tokens_per_second, "load_s": m.load_seconds,
                  "gather_s": m.gather_seconds} for m in runs],
    }
    return result, delta


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--preset", default="1b")
    p.add_argument("--seq-len", type=int, help="bytes per sequence (default: the preset's)")
    p.add_argument("--batch", type=int, default=8, help="sequences per micro-batch per rank")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--pipeline", action="store_true")
    p.add_argument("--codec", default="int8")
    p.add_argument("--tmp-dir", type=Path, help="where --pipeline writes its blob (default: the system's)")
    p.add_argument("--result", type=Path, required=True, help="rank 0 writes its JSON here")
    args = p.parse_args(argv)
    if min(args.batch, args.steps, args.warmup, args.repeats) < 1:
        p.error("--batch, --steps, --warmup and --repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    base = job(args.preset, args.seq_len, args.batch, world_size, precision=args.precision, compile=args.compile,
               activation_checkpointing=args.activation_checkpointing)
    config = parse_config(base, "multi_gpu job")
    task = task_of(config)
    leader = is_leader()
    clock = time.perf_counter()
    model = task.build_model(config.training.seed)  # what LocalEngine builds by itself, on the CPU
    # Rank 0 keeps a CPU copy of the initial weights as the global state each round starts from (what a
    # trainer decodes from the announced model): a copy, not a second build (8B: a minute of init).
    start = {k: v.detach().clone() for k, v in model.state_dict().items()} if leader else {}
    engine = LocalEngine(task, config.training, model, device=device)
    del model
    build_s = time.perf_counter() - clock
    # The whole model passes through each GPU before it is sharded (8B: 31 GB): apart from training's peak.
    build_peak = device_peak(device)
    reset_peak(device)
    if not leader:
        engine.follow()
        gather_peaks(engine.device, engine.world_size, build_peak)
        close_process_group()
        return leave_torchrun(0)
    cfg = model_config(task.options)
    seq_len = cfg.max_seq_len
    params = sum(t.numel() for t in start.values())
    print(f"  rank 0: {args.preset} ({params:,} params) on {world_size} x {device.type}, "
          f"built in {build_s:.1f}s; node batch {args.batch * world_size} x {seq_len}", flush=True)
    try:
        result, delta = lead(engine, start, args)
    finally:
        engine.close()
    peaks = gather_peaks(engine.device, engine.world_size, build_peak)
    result.update({
        "ranks": world_size, "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "python": platform.python_version(),
        "preset": args.preset, "params": params, "seq_len": seq_len, "per_gpu_batch": args.batch,
        "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "precision": args.precision,
        "compile": args.compile and device.type == "cuda", "activation_checkpointing": args.activation_checkpointing,
        "flops_per_token": flops_per_token(cfg, seq_len), "build_s": build_s,
        "device_peak_bytes": [p[0] for p in peaks], "build_peak_bytes": [p[1] for p in peaks],
        "host_peak_bytes": [p[2] for p in peaks],
    })
    if args.pipeline:
        identity = Identity.generate()
        pipeline = pipeline_config(base, args.codec, identity.public_key_hex, 2 * state_bytes(start) + (1 << 20))
        with tempfile.TemporaryDirectory(prefix="prime-multigpu-", dir=args.tmp_dir) as tmp:
            result["pipeline"] = update_pipeline(
                delta, start, pipeline, identity, Path(tmp), num_samples=result["samples_per_round"],
                devices=world_size, kind=device_kind(device), peak=peaks[0][0] or peaks[0][2])
        result["pipeline"]["rank0_host_peak_bytes"] = peak_rss_bytes()
    args.result.write_text(json.dumps(result, indent=2))
    close_process_group()
    return leave_torchrun(0)


if __name__ == "__main__":
    sys.exit(main())
