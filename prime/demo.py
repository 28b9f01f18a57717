"""``prime demo``: a whole prime network on one machine, every part a real process.

Starts the embedded MQTT broker, a DHT bootstrap node, the coordinator and N
trainers as separate OS processes talking over 127.0.0.1, trains a task (by default
``digits``: an MLP on scikit-learn's digits split non-IID across the trainers; or
``stdlib-lm``: the tiny byte-level transformer on the standard library's own source,
one group of modules per trainer) and prints per-round held-out metrics and the final
reward table. ``LocalNetwork`` is also what the integration tests use to start and kill
real processes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prime.coordinator.status import read_status
from prime.core.config import JobConfig, dump_toml, parse_config
from prime.core.errors import CoordinatorError, PrimeError
from prime.core.identity import Identity
from prime.core.net import free_port
from prime.observability.progress import bar as progress_bar
from prime.tasks import task_of


def _digits_job(trainers: int, rounds: int, local_epochs: int, local_steps: int | None) -> dict[str, Any]:
    return {
        "job_id": "digits-demo",
        "task": {"name": "digits", "options": {"hidden": [128], "dirichlet_alpha": 0.5, "test_fraction": 0.2}},
        "training": {"batch_size": 32, "learning_rate": 0.05, "optimizer": {"name": "sgd", "momentum": 0.9}},
        "federated": {"rounds": rounds, "local_epochs": local_epochs, "local_steps": local_steps or 0,
                      "min_clients": trainers, "participation_rate": 1.0, "round_timeout": 30.0, "reward_pool": 100.0},
    }


#: Optimizer steps each trainer takes per round of the language-model demo (H).
LM_LOCAL_STEPS = 20


def _stdlib_lm_job(trainers: int, rounds: int, local_epochs: int, local_steps: int | None) -> dict[str, Any]:
    local_steps = local_steps or LM_LOCAL_STEPS
    steps = rounds * local_steps  # each trainer's optimizer steps over the job: the schedule's length
    return {
        "job_id": "stdlib-lm-demo",
        "task": {"name": "stdlib-lm", "options": {"preset": "tiny", "validation_sequences": 128}},
        "training": {"batch_size": 16, "learning_rate": 3e-3, "gradient_clipping": 1.0,
                     "optimizer": {"name": "adamw", "beta2": 0.99, "weight_decay": 0.01},
                     "scheduler": {"name": "cosine", "warmup_steps": 10, "t_max": steps, "eta_min": 3e-4}},
        "federated": {"rounds": rounds, "local_steps": local_steps, "min_clients": trainers,
                      "participation_rate": 1.0, "round_timeout": 60.0, "reward_pool": 100.0},
    }


#: Optimizer steps each trainer takes per round of the LoRA demo.
LORA_LOCAL_STEPS = 10


def _lora_job(trainers: int, rounds: int, local_epochs: int, local_steps: int | None) -> dict[str, Any]:
    """LoRA adapters on every projection of a config-built tiny Llama, fine-tuned on the ``email``
    package of the standard library (its files split by document into shards and a held-out set)."""
    from prime.tasks.hf_lora import DEMO_OPTIONS

    local_steps = local_steps or LORA_LOCAL_STEPS
    return {
        "job_id": "hf-lora-demo",
        "task": {"name": "hf-causal-lm-lora", "options": dict(DEMO_OPTIONS)},
        "training": {"batch_size": 16, "learning_rate": 1e-2, "gradient_clipping": 1.0,
                     "optimizer": {"name": "adamw", "weight_decay": 0.0},
                     "scheduler": {"name": "cosine", "warmup_steps": 5, "t_max": rounds * local_steps,
                                   "eta_min": 1e-3}},
        "federated": {"rounds": rounds, "local_steps": local_steps, "min_clients": trainers,
                      "participation_rate": 1.0, "round_timeout": 120.0, "reward_pool": 100.0},
    }


#: Built-in tasks the demo can run, with their demo jobs.
DEMO_JOBS = {"digits": _digits_job, "stdlib-lm": _stdlib_lm_job, "hf-causal-lm-lora": _lora_job}


def demo_job(trainers: int, rounds: int, local_epochs: int, mqtt_url: str, coordinator_key: str,
             trainer_keys: dict[str, str], *, task: str | dict[str, Any] = "digits", local_steps: int | None = None,
             **overrides: Any) -> JobConfig:
    """The demo's job for ``task`` with ``trainers`` shards; ``overrides`` replace keys per section.

    ``task`` names a demo task, or is a whole ``[task]`` section (a user's task) trained with
    the digits demo's recipe. ``local_steps`` (H) replaces the task's local work per round."""
    data = DEMO_JOBS[task](trainers, rounds, local_epochs, local_steps) if isinstance(task, str) else \
        {**_digits_job(trainers, rounds, local_epochs, local_steps), "task": task, "job_id": "user-task-demo"}
    data.update({"coordinator_key": coordinator_key, "admission": {"trainers": trainer_keys},
                 "network": {"mqtt_url": mqtt_url, "heartbeat_interval": 0.5, "timeout": 5.0}})
    data["data"] = {"num_shards": trainers}
    for section, values in overrides.items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    return parse_config(data, "demo job")


class LocalNetwork:
    """Starts and stops the processes of a one-machine prime network under ``workdir``."""

    def __init__(self, workdir: Path, trainers: int, rounds: int, local_epochs: int = 2, *,
                 task: str | dict[str, Any] = "digits", local_steps: int | None = None,
                 extra_admitted: dict[str, str] | None = None, metrics: bool = False, **overrides: Any) -> None:
        self.workdir = Path(workdir).resolve()
        #: With ``metrics``, every process serves /metrics on a free port: process name → port.
        self.metrics = metrics
        self.metrics_ports: dict[str, int] = {}
        self.logs = self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.broker_port, self.dht_port, self.coordinator_port = free_port(), free_port(), free_port()
        self.standby_port = free_port()
        self.coordinator_dir = self.workdir / "coordinator"
        self.standby_dir = self.workdir / "standby"
        coordinator_key = Identity.load_or_create(self.coordinator_dir, "coordinator").public_key_hex
        self.trainer_names = [f"trainer-{i + 1:03d}" for i in range(trainers)]
        keys = {name: Identity.load_or_create(self.trainer_dir(name), name).public_key_hex for name in self.trainer_names}
        keys.update(extra_admitted or {})
        self.config = demo_job(trainers, rounds, local_epochs, f"mqtt://127.0.0.1:{self.broker_port}",
                               coordinator_key, keys, task=task, local_steps=local_steps, **overrides)
        self.config_path = self.workdir / "job.toml"
        self.config_path.write_text(dump_toml(self.config))
        self.procs: dict[str, subprocess.Popen] = {}

    def trainer_dir(self, name: str) -> Path:
        return self.workdir / name

    def _metrics_flag(self, name: str) -> list[str]:
        if not self.metrics:
            return []
        self.metrics_ports[name] = port = free_port()
        return ["--metrics-port", str(port)]

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=self.workdir, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def start_infrastructure(self) -> None:
        self._spawn("broker", "-m", "prime", "broker", "--listen", f"127.0.0.1:{self.broker_port}")
        self._spawn("dht", "-m", "prime", "dht-node", "--listen", f"127.0.0.1:{self.dht_port}",
                    *self._metrics_flag("dht"))
        _wait_for_port(self.broker_port, self.procs["broker"], self.logs / "broker.log")

    def start_coordinator(self, *extra: str) -> subprocess.Popen:
        return self._spawn(
            "coordinator", "-m", "prime.coordinator.cli", "--config", str(self.config_path),
            "--data-dir", str(self.coordinator_dir), "--listen", f"127.0.0.1:{self.coordinator_port}",
            "--bootstrap", f"127.0.0.1:{self.dht_port}", *self._metrics_flag("coordinator"), *extra,
        )

    def start_standby(self) -> subprocess.Popen:
        """A standby coordinator: same job key (copied, mode 0600), its own data dir and port."""
        key = self.standby_dir / "node.key"
        if not key.exists():
            self.standby_dir.mkdir(parents=True, exist_ok=True)
            key.write_bytes((self.coordinator_dir / "node.key").read_bytes())
            key.chmod(0o600)
        return self._spawn(
            "standby", "-m", "prime.coordinator.cli", "--standby", "--config", str(self.config_path),
            "--data-dir", str(self.standby_dir), "--listen", f"127.0.0.1:{self.standby_port}",
            "--bootstrap", f"127.0.0.1:{self.dht_port}", *self._metrics_flag("standby"),
        )

    def start_trainer(self, index: int, *extra: str, ranks: int = 1, program: list[str] | None = None,
                      torchrun: bool = False) -> subprocess.Popen:
        """Trainer ``index`` as one process, or as ``ranks`` processes under ``torchrun`` (one node);
        ``torchrun`` launches even one rank that way (its process group comes from torchrun's rendezvous).

        ``program`` replaces ``-m prime.trainer.cli`` with another entry point taking the same flags
        (the attack harness's trainers)."""
        name = self.trainer_names[index]
        ports = [self.coordinator_port, *([self.standby_port] if "standby" in self.procs else []), self.dht_port]
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"] \
            if ranks > 1 or torchrun else []
        return self._spawn(
            name, *launcher, *(program or ["-m", "prime.trainer.cli"]), "--node-id", name,
            "--config", str(self.config_path), "--coordinators", ",".join(f"127.0.0.1:{port}" for port in ports),
            "--data-dir", str(self.trainer_dir(name)), *self._metrics_flag(name), *extra,
        )

    def start_all(self) -> None:
        self.start_infrastructure()
        self.start_coordinator()
        for i in range(len(self.trainer_names)):
            self.start_trainer(i)

    def status(self) -> dict[str, Any] | None:
        """The coordinator state furthest ahead (the primary's, or a standby's that took over)."""
        found = [s for s in (self.status_of(self.coordinator_dir), self.status_of(self.standby_dir)) if s]
        return max(found, key=lambda s: s["rounds_committed"]) if found else None

    @staticmethod
    def status_of(data_dir: Path) -> dict[str, Any] | None:
        try:
            return read_status(data_dir)
        except (PrimeError, OSError, ValueError, sqlite3.Error):
            return None  # not created yet, mid-restore, or mid-write: try again next poll

    def wait_for_rounds(self, rounds: int, timeout: float) -> dict[str, Any]:
        """Poll until ``rounds`` rounds are committed; the status then. A process that crashed, or the
        timeout, is a ``PrimeError`` with the log tail (what the benchmarks print and exit on)."""
        deadline, status = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            status = self.status()
            if status and status["rounds_committed"] >= rounds:
                return status
            crashed = {n: rc for n, rc in self.dead().items() if rc not in (0, None)}
            if crashed:
                name = next(iter(crashed))
                raise PrimeError(f"{name} exited with {crashed[name]}:\n{self.log_tail(name)}")
            time.sleep(0.5)
        raise PrimeError(f"{rounds} rounds did not commit in {timeout:.0f}s; last status {status}")

    def signal(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(timeout=10)

    def dead(self) -> dict[str, int]:
        """Processes that exited (name → return code)."""
        return {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop_all(self, grace: float = 5.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> "LocalNetwork":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CoordinatorError(f"process exited early; see {log}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise CoordinatorError(f"nothing listening on 127.0.0.1:{port} after {timeout}s; see {log}")


def run_demo(*, trainers: int, rounds: int, workdir: Path | None, as_json: bool, local_epochs: int = 2,
             task: str = "digits") -> int:
    if trainers < 1 or rounds < 1:
        print("error: --trainers and --rounds must be at least 1", file=sys.stderr)
        return 2
    if task not in DEMO_JOBS:
        print(f"error: the demo runs {', '.join(DEMO_JOBS)}; for other tasks write a job config "
              f"(README: Running a network by hand)", file=sys.stderr)
        return 2
    workdir = workdir or Path("runs") / time.strftime(f"demo-{task}-%Y%m%d-%H%M%S")
    say = (lambda *a, **k: None) if as_json else print
    started = time.monotonic()
    net = LocalNetwork(workdir, trainers, rounds, local_epochs, task=task)
    spec = task_of(net.config)
    headline = spec.metrics[:2]
    say(f"prime demo: {trainers} trainers, {rounds} rounds, task {task} ({spec.spec.description})")
    say(f"  workdir {net.workdir}")
    try:
        net.start_all()
        say(f"  started broker :{net.broker_port}, DHT node :{net.dht_port}, coordinator :{net.coordinator_port}, "
            f"{trainers} trainers (each a separate process)")
        say(f"{'round':>7} " + " ".join(f"{m:>13}" for m in headline) + f" {'trainers':>8} {'seconds':>8}")
        shown, status = 0, None
        with progress_bar("rounds committed", rounds, enabled=not as_json) as progress:  # stderr, terminals only
            while True:
                status = net.status() or status
                for row in (status or {}).get("rounds", [])[shown:]:
                    values = " ".join(f"{row['metrics'].get(m, float('nan')):>13.4f}" for m in headline)
                    say(f"{row['round']:>4}/{rounds:<2} {values} {row['participants']:>8} {row['seconds']:>8.2f}",
                        flush=True)
                    shown += 1
                    progress.advance(progress.task_ids[0])
                if shown >= rounds:
                    break
                died = {n: rc for n, rc in net.dead().items() if rc != 0 or n in ("broker", "dht", "coordinator")}
                if died:
                    name = next(iter(died))
                    print(f"error: {name} exited with code {died[name]}; last lines of its log:\n"
                          f"{net.log_tail(name)}", file=sys.stderr)
                    return 1
                time.sleep(0.2)
        # Let trainers see the final commit and exit on their own.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(net.procs[n].poll() is None for n in net.trainer_names):
            time.sleep(0.1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        net.stop_all()
    status = net.status() or status
    final = status["rounds"][-1]["metrics"]
    summary = {
        "task": task,
        "final_metrics": final,
        "first_round_metrics": status["rounds"][0]["metrics"],
        "rounds_committed": status["rounds_committed"],
        "rewards": status["rewards"],
        "rejected_updates": len(status["rejected_updates"]),
        "ledger_valid": status["ledger_valid"],
        "wall_seconds": round(time.monotonic() - started, 2),
        "workdir": str(net.workdir),
    }
    if "accuracy" in final:
        summary["final_accuracy"] = final["accuracy"]
    if as_json:
        print(json.dumps(summary))
        return 0
    shown = ", ".join(f"{m} {final[m]:.4f}" for m in headline if m in final)
    print(f"\nfinal held-out {shown} after {summary['rounds_committed']} rounds in {summary['wall_seconds']:.1f}s")
    print(f"rewards (tokens; ledger hash chain {'valid' if summary['ledger_valid'] else 'BROKEN'}):")
    for node, amount in summary["rewards"].items():
        print(f"  {node:<14} {amount:>10.4f}")
    print(f"artifacts: {net.workdir}  (job.toml, logs/, coordinator/coordinator.sqlite, */blobs/)")
    print(f"inspect:   prime-coordinator status --data-dir {net.coordinator_dir}")
    print(f"export:    prime-coordinator export --data-dir {net.coordinator_dir} --out model.safetensors")
    print(f"report:    prime report --data-dir {net.coordinator_dir} --out {net.workdir / 'report'}")
    if task == "hf-causal-lm-lora":
        print(f"merged:    prime-coordinator export --data-dir {net.coordinator_dir} --merge-lora --out merged-model")
    return 0
