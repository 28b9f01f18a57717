"""Federated LoRA against centralized LoRA with the same steps, and both against the base (issue 13, item 3).

1. Base: a Llama built from a config (``--preset``, default ``small-llama``), pre-trained here with a
   plain PyTorch loop on the standard library *without* the fine-tuning domain, saved with
   ``save_pretrained`` and pinned by digest (the job loads it with ``base_path``, as a user would).
2. Domain: the ``email`` package (plus ``--domain`` modules), never seen by the base; its files
   are split by document into trainer shards and a held-out set (``hf-causal-lm-lora`` data).
3. Arms, all scored on the same held-out domain windows:
   - ``base``: the pre-trained base, no adapters;
   - ``federated``: a real prime network on 127.0.0.1 (``LocalNetwork``: broker, DHT node,
     coordinator, N trainers as processes), FedAvg over the adapters, R rounds of H steps of batch b;
   - ``federated-ffa``: the same with ``freeze_a`` (FFA-LoRA: only B trained and sent);
   - ``centralized``: the same ``LocalEngine`` in this process on the union of the shards, R·H
     steps of batch N·b (the same steps, the same tokens), same recipe.
   Goal: federated within 5% of centralized in held-out loss, and clearly better than the base.
4. Bytes per round: each accepted update's blob (adapters) against the full model's fp32 state.

    python benchmarks/lora_quality.py [--trainers 2] [--rounds 8] [--local-steps 10] [--pretrain-steps 400]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prime.blobs.store import BlobStore  # noqa: E402
from prime.core import tensors  # noqa: E402
from prime.core.config import parse_config  # noqa: E402
from prime.core.errors import PrimeError  # noqa: E402
from prime.core.datasets import Split  # noqa: E402
from prime.demo import LocalNetwork  # noqa: E402
from prime.tasks import Shard, hf_base, stdlib_corpus as corpus  # noqa: E402
from prime.tasks.registry import resolve_task  # noqa: E402
from prime.trainer.engine import LocalEngine, LocalWork  # noqa: E402

DOMAIN = ["email"]
#: Kept out of the base's pre-training too: they are about mail as well.
NEAR_DOMAIN = {"mailbox", "smtplib", "imaplib", "poplib", "nntplib", "mailcap"}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def pretrain(preset: str, steps: int, seq_len: int, batch: int, out: Path) -> tuple[str, float]:
    """Pre-train a base on the stdlib minus the domain; save it to ``out``; (digest, seconds)."""
    started = time.monotonic()
    training, _ = corpus.split_modules(corpus.scan())
    modules = [m for m in training if m.name not in set(DOMAIN) | NEAR_DOMAIN]
    data = corpus.windows(corpus.read_modules(modules), seq_len)
    model = hf_base.build_preset(preset, seed=0, seq_len=seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for step in range(steps):
        for group in opt.param_groups:  # warmup, then cosine down to a tenth
            group["lr"] = 3e-3 * min(1.0, (step + 1) / 20) * (0.55 + 0.45 * math.cos(math.pi * step / steps))
        idx = torch.randint(len(data), (batch,), generator=gen)
        logits = model(input_ids=data.x[idx].long()).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), data.y[idx].long().flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            print(f"  pretrain step {step:>4}/{steps}: loss {loss.item():.4f}", flush=True)
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    return hf_base.weights_digest(model), time.monotonic() - started


def job(options: dict, trainers: int, rounds: int, h: int, batch: int) -> dict:
    return {
        "training": {"batch_size": batch, "learning_rate": 3e-3, "gradient_clipping": 1.0,
                     "optimizer": {"name": "adamw", "momentum": 0.9, "weight_decay": 0.0},
                     "scheduler": {"name": "cosine", "warmup_steps": 5, "t_max": rounds * h, "eta_min": 3e-4}},
        "federated": {"rounds": rounds, "local_steps": h, "min_clients": trainers, "round_timeout": 600.0,
                      "aggregation": {"name": "fedavg"}},
    }


def federated(options: dict, trainers: int, rounds: int, h: int, batch: int, workdir: Path) -> dict:
    started = time.monotonic()
    recipe = job(options, trainers, rounds, h, batch)
    with LocalNetwork(workdir, trainers, rounds, task={"name": "hf-causal-lm-lora", "options": options},
                      local_steps=h, training=recipe["training"], federated=recipe["federated"]) as net:
        net.start_all()
        try:
            status = net.wait_for_rounds(rounds, 600 * rounds)
        except PrimeError as exc:
            raise SystemExit(str(exc)) from None
        db = sqlite3.connect(net.coordinator_dir / "coordinator.sqlite")
        digests = [row[0] for row in db.execute("SELECT digest FROM updates")]
        model_digest = db.execute("SELECT digest FROM model_versions ORDER BY version DESC LIMIT 1").fetchone()[0]
        db.close()
        store = BlobStore(net.coordinator_dir / "blobs")
        update_bytes = [len(store.read_bytes(d)) for d in digests]
        adapters = tensors.decode_state(bytearray(store.read_bytes(model_digest)), max_bytes=1 << 34)
    return {"losses": [r["metrics"]["loss"] for r in status["rounds"]], "loss": status["rounds"][-1]["metrics"]["loss"],
            "rejected": len(status["rejected_updates"]), "seconds": round(time.monotonic() - started, 1),
            "update_bytes": max(update_bytes), "updates": len(update_bytes), "adapter_tensors": len(adapters)}


def centralized(options: dict, trainers: int, rounds: int, h: int, batch: int) -> dict:
    started = time.monotonic()
    config = parse_config({"task": {"name": "hf-causal-lm-lora", "options": options},
                           **job(options, trainers, rounds, h, batch * trainers)}, "lora_quality")
    task = resolve_task("hf-causal-lm-lora", options)
    shards = [task.load_shard(Shard(i, trainers)) for i in range(trainers)]
    union = Split(torch.cat([s.x for s in shards]), torch.cat([s.y for s in shards]))
    model = task.build_model(config.training.seed)
    start = {k: v.detach().clone() for k, v in task.exchanged_state(model).items()}
    engine = LocalEngine(task, config.training, device=torch.device("cpu"))
    engine.use_data(union)
    delta, _ = engine.train(start, LocalWork(steps=rounds * h))
    engine.close()
    task.load_exchanged_state(model, {k: start[k] + delta[k] for k in start})
    loss = task.evaluate(model, task.load_validation())["loss"]
    return {"loss": loss, "seconds": round(time.monotonic() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small-llama", choices=sorted(hf_base.PRESETS))
    p.add_argument("--pretrain-steps", type=int, default=400)
    p.add_argument("--trainers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--no-ffa", action="store_true", help="skip the FFA-LoRA arm")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="lora-quality-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"lora_quality: {args.preset} base, {args.pretrain_steps} pre-training steps; {args.trainers} trainers, "
          f"{args.rounds} rounds x {args.local_steps} steps of batch {args.batch}; workdir {workdir}", flush=True)
    digest, pretrain_s = pretrain(args.preset, args.pretrain_steps, args.seq_len, 32, workdir / "base")
    options = {"base_path": str(workdir / "base"), "base_digest": digest, "r": args.r, "lora_alpha": 2.0 * args.r,
               "target_modules": TARGETS, "stdlib_modules": DOMAIN, "seq_len": args.seq_len,
               "validation_sequences": 256}
    task = resolve_task("hf-causal-lm-lora", options)
    model = task.build_model(0)
    validation = task.load_validation()
    base = task.evaluate(model, validation)["loss"]
    full_bytes = len(tensors.encode_state({k: v for k, v in model.get_base_model().state_dict().items()
                                           if "lora_" not in k}))
    print(f"  base held-out loss {base:.4f} ({len(validation)} windows of {args.seq_len} bytes)", flush=True)
    results = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
               "preset": args.preset, "pretrain_steps": args.pretrain_steps, "pretrain_seconds": round(pretrain_s, 1),
               "trainers": args.trainers, "rounds": args.rounds, "local_steps": args.local_steps, "batch": args.batch,
               "r": args.r, "base_loss": base, "full_model_bytes": full_bytes}
    fed = federated(options, args.trainers, args.rounds, args.local_steps, args.batch, workdir / "federated")
    print(f"  federated LoRA: loss {fed['loss']:.4f} by round {[round(x, 3) for x in fed['losses']]}, "
          f"{fed['seconds']}s", flush=True)
    results["federated"] = fed
    if not args.no_ffa:
        ffa = federated({**options, "freeze_a": True}, args.trainers, args.rounds, args.local_steps, args.batch,
                        workdir / "federated-ffa")
        print(f"  federated FFA-LoRA: loss {ffa['loss']:.4f}, {ffa['seconds']}s", flush=True)
        results["federated_ffa"] = ffa
    cen = centralized(options, args.trainers, args.rounds, args.local_steps, args.batch)
    print(f"  centralized LoRA ({args.rounds * args.local_steps} steps of batch {args.batch * args.trainers}): "
          f"loss {cen['loss']:.4f}, {cen['seconds']}s", flush=True)
    results["centralized"] = cen
    gap = (fed["loss"] - cen["loss"]) / cen["loss"]
    results["federated_vs_centralized"] = gap
    print(f"\nheld-out loss on the unseen domain: base {base:.4f}, federated {fed['loss']:.4f} "
          f"({gap:+.1%} vs centralized {cen['loss']:.4f})" + (f", FFA {results['federated_ffa']['loss']:.4f}"
                                                              if "federated_ffa" in results else ""))
    print(f"goal federated within 5% of centralized: {'met' if gap <= 0.05 else 'NOT met'}; "
          f"better than base by {base - fed['loss']:.4f} nats/byte")
    print(f"bytes per update: LoRA {fed['update_bytes']:,} vs full model {full_bytes:,} "
          f"({full_bytes / fed['update_bytes']:.1f}x fewer)" + (
              f"; FFA {results['federated_ffa']['update_bytes']:,}" if "federated_ffa" in results else ""))
    print(f"bytes per round (uplink, {args.trainers} trainers): LoRA {args.trainers * fed['update_bytes']:,} vs full "
          f"{args.trainers * full_bytes:,}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
