"""Byzantine trainers for ``benchmarks/byzantine.py``: a real ``prime-trainer`` process whose
``TrainerNode.local_update`` is overridden to send something other than an honest update.

    python benchmarks/attackers.py --attack NAME [attack flags] <the usual prime-trainer flags>

The node is built exactly as ``prime-trainer`` builds it (``TrainerNode.create``), holds an
admitted key, heartbeats, follows announcements, trains on its assigned shard and signs and
publishes its update the normal way; only the delta and the claimed sample count are the
attacker's. Attacks:

- ``signflip``  train honestly, send −k·delta (``--scale k``, 10), claim honestly.
- ``noise``     send Gaussian noise with the honest delta's per-tensor std (or ``--sigma``).
- ``alie``      "A Little Is Enough" (Baruch et al. 2019): μ − z·σ per coordinate, μ and σ the
                coordinate-wise mean and std of the round's benign updates, s = ⌊n/2 + 1⌋ − f,
                z = Φ⁻¹((n − s)/n) (or ``--z``).
- ``ipm``       inner-product manipulation (Xie et al. 2020): −ε·μ of the benign updates
                (``--epsilon``, 0.5).
- ``labelflip`` data poisoning: train on the shard with labels flipped (digits y → 9 − y; a
                sequence task's targets reversed per row) and send that delta honestly.
- ``freerider`` no training: a zero delta (or ``--noise σ`` Gaussian), honest-looking claim.
- ``stale``     train once, then re-send that same delta every later round.
- ``inflate``   honest delta, claims ``--factor`` (50) × its samples (capped at
                ``security.max_samples_per_update``).
- ``copy``      re-send another trainer's current update (taken from the bus) under its own key.

The omniscient attacks (``alie``, ``ipm``, ``copy``) see what prime lets any participant see:
honest update notices travel on the bus (``Topics(job).updates``) and small updates ride inline
in them; larger ones are fetched by digest from the providers the signed record names. They wait
until n − f benign updates of the round arrived (n selected, f = this attacker and its
``--colluders``) or ``--wait-fraction`` (0.7) of the round timeout passed; with fewer, ALIE and
IPM fall back to the attacker's own honest delta as μ (σ from the benign updates it saw, its own
included). Per round, what the attacker did is appended to ``DATA_DIR/attack.jsonl``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from prime.bus.client import BusClient  # noqa: E402
from prime.console import setup_logging  # noqa: E402
from prime.core import parcel, tensors  # noqa: E402
from prime.core.datasets import Split  # noqa: E402
from prime.core.errors import PrimeError  # noqa: E402
from prime.core.net import parse_hostport  # noqa: E402
from prime.core.records import RoundAnnouncement, UpdateRecord  # noqa: E402
from prime.blobs.fetch import fetch_verified  # noqa: E402
from prime.trainer import cli as trainer_cli  # noqa: E402
from prime.trainer.engine import LocalWork, TrainMetrics  # noqa: E402
from prime.trainer.node import TrainerNode  # noqa: E402

log = logging.getLogger("attacker")

ATTACKS = ("signflip", "noise", "alie", "ipm", "labelflip", "freerider", "stale", "inflate", "copy")
OMNISCIENT = ("alie", "ipm", "copy")
StateDict = dict[str, torch.Tensor]


def attack_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attackers.py", add_help=False,
                                description="A byzantine prime trainer (the rest of the flags are prime-trainer's).")
    p.add_argument("--attack", required=True, choices=ATTACKS)
    p.add_argument("--scale", type=float, default=10.0, help="signflip: send -scale * delta")
    p.add_argument("--sigma", type=float, help="noise: this std for every tensor (default: the honest delta's)")
    p.add_argument("--z", type=float, help="alie: this z (default: Baruch et al.'s formula)")
    p.add_argument("--epsilon", type=float, default=0.5, help="ipm: send -epsilon * mean of the benign updates")
    p.add_argument("--noise", type=float, default=0.0, help="freerider: Gaussian noise of this std instead of zeros")
    p.add_argument("--factor", type=float, default=50.0, help="inflate: claim factor * the samples trained")
    p.add_argument("--colluders", default="", help="comma-separated names of the other attackers (not benign)")
    p.add_argument("--wait-fraction", type=float, default=0.7,
                   help="omniscient attacks: wait for benign updates until this fraction of the round timeout")
    p.add_argument("--seed", type=int, default=1234, help="noise seed")
    return p


# -- the tensor side of the attacks (pure functions) -----------------------------------------
def scaled(delta: StateDict, k: float) -> StateDict:
    return {n: t * k for n, t in delta.items()}


def gaussian_like(delta: StateDict, sigma: float | None, generator: torch.Generator) -> StateDict:
    """Noise with each tensor's own std (or ``sigma``): what the honest delta's scale looks like."""
    out = {}
    for name, t in delta.items():
        std = sigma if sigma is not None else (float(t.float().std()) if t.numel() > 1 else float(t.abs().mean()))
        out[name] = (torch.randn(t.shape, generator=generator) * std).to(t.dtype)
    return out


def coordinate_stats(updates: list[StateDict]) -> tuple[StateDict, StateDict]:
    """Coordinate-wise mean and std (population) of ``updates`` (std 0 for a single one)."""
    mean, std = {}, {}
    for name in updates[0]:
        stack = torch.stack([u[name].float() for u in updates])
        mean[name] = stack.mean(0)
        std[name] = stack.std(0, correction=0) if len(updates) > 1 else torch.zeros_like(mean[name])
    return mean, std


def alie_z(n: int, f: int) -> float:
    """Baruch et al. 2019: s = ⌊n/2 + 1⌋ − f supporters needed; z = Φ⁻¹((n − s)/n)."""
    s = math.floor(n / 2 + 1) - f
    p = min(max((n - s) / n, 1e-6), 1 - 1e-6)
    return statistics.NormalDist().inv_cdf(p)


def flipped(data: Split, task_name: str) -> Split:
    """Label flipping: digits y → 9 − y; class labels y → (C − 1) − y; sequence targets reversed."""
    y = data.y
    if y.dim() > 1:
        y = y.flip(-1)
    elif task_name == "digits":
        y = 9 - y
    else:
        y = int(y.max()) - y
    return Split(data.x, y.contiguous())


# -- what the bus shows ------------------------------------------------------------------------
@dataclasses.dataclass
class Seen:
    record: UpdateRecord
    signer: bytes
    delta: StateDict


class UpdateWatcher:
    """Collects the other trainers' update notices per (round, model version), deltas decoded.

    Its own bus connection (the node's ``messages()`` has a single reader), subscribed before
    the first round: notices are not retained."""

    def __init__(self, node: TrainerNode, url: str, ignore_names: set[str]) -> None:
        self.node = node
        net = node.config.network
        self.bus = BusClient(url, f"watch-{node.identity.network_id}",
                             max_retries=node.config.fault_tolerance.max_retries, timeout=net.timeout,
                             max_payload=parcel.max_parcel_bytes(net.inline_blob_max_bytes))
        self.ignore_names = ignore_names
        self.seen: dict[tuple[int, int], dict[bytes, Seen]] = {}
        self.changed = asyncio.Condition()
        self._task: asyncio.Task | None = None
        self._fetches: set[asyncio.Task] = set()

    async def start(self) -> None:
        await self.bus.connect()
        await self.bus.subscribe(self.node.topics.updates)
        self._task = asyncio.create_task(self._listen(), name="attacker:watch")

    async def close(self) -> None:
        for task in [*self._fetches, *([self._task] if self._task else [])]:
            task.cancel()
        for task in [*self._fetches, *([self._task] if self._task else [])]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.bus.close()

    async def _listen(self) -> None:
        net = self.node.config.network
        async for _topic, payload in self.bus.messages():
            try:
                envelope, inline = parcel.unpack(payload, max_blob_bytes=net.inline_blob_max_bytes)
                record, env = UpdateRecord.open(envelope)
            except PrimeError:
                continue
            if env.signer == self.node.identity.public_key or record.node_name in self.ignore_names:
                continue
            if record.job_id != self.node.config.job_id or record.round < self.node.current_round - 1:
                continue
            key = (record.round, record.model_version)
            if env.signer in self.seen.get(key, {}):
                continue
            task = asyncio.create_task(self._decode(key, record, env.signer, inline))
            self._fetches.add(task)
            task.add_done_callback(self._fetches.discard)

    async def _decode(self, key: tuple[int, int], record: UpdateRecord, signer: bytes, inline: bytes | None) -> None:
        net = self.node.config.network
        try:
            if inline is not None and await parcel.is_signed_blob(inline, record.blob_digest, record.blob_size):
                data = inline
            else:
                data = await fetch_verified([parse_hostport(p) for p in record.providers], record.blob_digest,
                                            self.node.peer.blobs, max_bytes=net.max_message_size, timeout=net.timeout)
            delta = await asyncio.to_thread(tensors.decode_state, bytes(data), max_bytes=net.max_message_size)
        except (PrimeError, ValueError, OSError) as exc:
            log.warning("could not read %s's round-%d update: %s", record.node_name, record.round, exc)
            return
        async with self.changed:
            self.seen.setdefault(key, {}).setdefault(signer, Seen(record, signer, delta))
            for old in [k for k in self.seen if k[0] < record.round - 1]:
                del self.seen[old]
            self.changed.notify_all()

    async def wait(self, ann: RoundAnnouncement, need: int, until: float) -> list[Seen]:
        """The round's other updates once ``need`` arrived or at wall time ``until`` (what there is)."""
        key = (ann.round, ann.model_version)
        async with self.changed:
            while len(self.seen.get(key, {})) < need and (left := until - time.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), left)
            return sorted(self.seen.get(key, {}).values(), key=lambda s: s.record.issued)


# -- the node ----------------------------------------------------------------------------------
class AttackerNode(TrainerNode):
    """A ``TrainerNode`` whose ``local_update`` sends the configured attack (``configure`` first)."""

    def configure(self, options: argparse.Namespace, url: str) -> None:
        self.attack = options.attack
        self.options = options
        self.colluders = {n for n in options.colluders.split(",") if n}
        self.generator = torch.Generator().manual_seed(options.seed)
        self.previous: tuple[StateDict, TrainMetrics] | None = None  # stale: the delta sent before
        self._flipped: tuple[int, Split] | None = None  # labelflip: (id of the clean data, flipped copy)
        self.watcher = UpdateWatcher(self, url, self.colluders) if self.attack in OMNISCIENT else None
        self.report_path = self.checkpoints.root.parent / "attack.jsonl"

    async def start_training(self) -> None:
        if self.watcher is not None:
            await self.watcher.start()
        await super().start_training()

    async def close(self) -> None:
        if self.watcher is not None:
            await self.watcher.close()
        await super().close()

    # -- helpers
    async def honest(self, ann: RoundAnnouncement, global_state: dict) -> tuple[StateDict, TrainMetrics]:
        return await super().local_update(ann, global_state)

    def claimed_samples(self) -> tuple[int, int]:
        """(samples, steps) an honest node would report this round, without training."""
        work = LocalWork.of(self.config.federated)
        training = self.config.training
        batch = self.engine.task.batch_size(training.batch_size) * training.gradient_accumulation
        n = len(self.engine.data) if self.engine.data is not None else 0
        if work.steps:
            return work.steps * batch, work.steps
        return n * work.epochs, math.ceil(n / max(batch, 1)) * work.epochs

    def faked_metrics(self, samples: int, steps: int) -> TrainMetrics:
        base = self.metrics  # the last round's (or the node's initial zeros): only the claim changes
        return dataclasses.replace(base, num_samples=samples, steps=steps, loss=base.loss or 1.0)

    def zeros(self, global_state: dict) -> StateDict:
        return {n: torch.zeros(t.shape, dtype=torch.float32) for n, t in global_state.items()}

    def benign_needed(self, ann: RoundAnnouncement) -> tuple[int, int, int]:
        """(n selected, f attackers among them, n − f benign updates to wait for)."""
        n = len(ann.selected)
        f = 1 + len(self.colluders)
        return n, f, max(1, n - f)

    def wait_until(self, ann: RoundAnnouncement) -> float:
        timeout = self.config.federated.round_timeout
        return ann.deadline - (1 - self.options.wait_fraction) * timeout

    def report(self, ann: RoundAnnouncement, **fields) -> None:
        line = {"round": ann.round, "attack": self.attack, **fields}
        log.info("round %d: attack %s: %s", ann.round, self.attack, json.dumps(fields))
        with contextlib.suppress(OSError):
            with open(self.report_path, "a") as f:
                f.write(json.dumps(line) + "\n")

    # -- the seam
    async def local_update(self, ann: RoundAnnouncement, global_state: dict) -> tuple[dict, TrainMetrics]:
        o, a = self.options, self.attack
        if a == "freerider":
            samples, steps = self.claimed_samples()
            delta = self.zeros(global_state)
            if o.noise > 0:
                delta = gaussian_like(delta, o.noise, self.generator)
            self.report(ann, claimed=samples, noise=o.noise)
            return delta, self.faked_metrics(samples, steps)
        if a == "stale":
            if self.previous is None:
                self.previous = await self.honest(ann, global_state)
                self.report(ann, sent="honest (first round)")
            else:
                self.report(ann, sent="previous delta again")
            delta, metrics = self.previous
            return {n: t.clone() for n, t in delta.items()}, metrics
        if a == "copy":
            n, f, _ = self.benign_needed(ann)
            seen = await self.watcher.wait(ann, 1, self.wait_until(ann))
            if seen:
                victim = seen[0]
                self.report(ann, copied=victim.record.node_name, digest=victim.record.blob_digest[:16],
                            claimed=victim.record.num_samples)
                samples, steps = victim.record.num_samples, int(victim.record.metrics.get("steps", 0))
                return {k: v.clone() for k, v in victim.delta.items()}, self.faked_metrics(samples, steps)
            self.report(ann, copied=None, fallback="honest")
            return await self.honest(ann, global_state)
        if a == "labelflip":
            return await self.poisoned(ann, global_state)

        delta, metrics = await self.honest(ann, global_state)
        if a == "signflip":
            self.report(ann, scale=-o.scale)
            return scaled(delta, -o.scale), metrics
        if a == "noise":
            self.report(ann, sigma=o.sigma if o.sigma is not None else "per-tensor std")
            return gaussian_like(delta, o.sigma, self.generator), metrics
        if a == "inflate":
            claim = min(int(metrics.num_samples * o.factor), self.config.security.max_samples_per_update)
            self.report(ann, trained=metrics.num_samples, claimed=claim)
            return delta, dataclasses.replace(metrics, num_samples=claim)
        if a in ("alie", "ipm"):
            return await self.omniscient(ann, delta, metrics), metrics
        raise AssertionError(a)

    async def poisoned(self, ann: RoundAnnouncement, global_state: dict) -> tuple[StateDict, TrainMetrics]:
        """Train on a label-flipped copy of the assigned shard; the engine keeps its clean data."""
        clean = self.engine.data
        if self._flipped is None or self._flipped[0] != id(clean):
            self._flipped = (id(clean), flipped(clean, self.config.task.name))
        self.engine.data = self._flipped[1]
        try:
            delta, metrics = await self.honest(ann, global_state)
        finally:
            self.engine.data = clean
        self.report(ann, trained_on="flipped labels", samples=metrics.num_samples)
        return delta, metrics

    async def omniscient(self, ann: RoundAnnouncement, own: StateDict, metrics: TrainMetrics) -> StateDict:
        n, f, need = self.benign_needed(ann)
        seen = await self.watcher.wait(ann, need, self.wait_until(ann))
        others = [s.delta for s in seen]
        if len(others) >= need:
            mean, std = coordinate_stats(others)
            basis = f"{len(others)} benign updates"
        else:  # too few seen in time: our own honest delta is a benign sample of the same distribution
            mean, _ = coordinate_stats([own])
            _, std = coordinate_stats([own, *others])
            basis = f"own delta (saw {len(others)} of {need} benign)"
        if self.attack == "alie":
            z = self.options.z if self.options.z is not None else alie_z(n, f)
            self.report(ann, basis=basis, benign_seen=len(others), fallback=len(others) < need, z=round(z, 4), n=n, f=f)
            return {k: (mean[k] - z * std[k]).to(own[k].dtype) for k in own}
        eps = self.options.epsilon
        self.report(ann, basis=basis, benign_seen=len(others), fallback=len(others) < need, epsilon=eps)
        return {k: (-eps * mean[k]).to(own[k].dtype) for k in own}


def main(argv: list[str] | None = None) -> int:
    options, rest = attack_parser().parse_known_args(argv)
    args = trainer_cli.parse_args(rest)
    setup_logging(args.log_level, f"{args.node_id}[{options.attack}]")

    def prepare(node: TrainerNode, config) -> dict:
        node.configure(options, args.mqtt_url or config.network.mqtt_url or "mqtt://127.0.0.1:1883")
        return {"attack": options.attack}

    return trainer_cli.run_node(args, AttackerNode, prepare)


if __name__ == "__main__":
    sys.exit(main())
