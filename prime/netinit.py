"""``prime init DIR --trainers N``: everything a local network needs, and the commands to run it.

Creates (or reuses) the coordinator's and each trainer's Ed25519 key in their own data dirs,
writes ``DIR/job.toml`` pinning the coordinator key and admitting the trainers (the demo's
recipe for the task), and returns the exact command line of each process: the MQTT broker,
the coordinator, every trainer. Nothing is started; the operator (or a test) runs them.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from prime.core.config import dump_toml, load_config
from prime.core.errors import ConfigError
from prime.core.identity import Identity
from prime.demo import DEMO_JOBS, demo_job


@dataclass(frozen=True)
class NetworkPlan:
    """What ``prime init`` wrote, and the commands that run it (each a list of arguments)."""

    directory: Path
    job_file: Path
    coordinator_key: str
    trainer_keys: dict[str, str]
    commands: dict[str, list[str]]

    def command_lines(self) -> dict[str, str]:
        return {name: shlex.join(argv) for name, argv in self.commands.items()}


def init_network(directory: str | Path, *, trainers: int, task: str = "digits", rounds: int | None = None,
                 host: str = "127.0.0.1", broker_port: int = 1883, coordinator_port: int = 7000,
                 metrics_port: int | None = None, force: bool = False) -> NetworkPlan:
    """Write keys and ``job.toml`` under ``directory``; ``metrics_port`` is the coordinator's, trainers
    take the ports after it."""
    if trainers < 1:
        raise ConfigError(f"--trainers {trainers}: a network needs at least one trainer")
    if task not in DEMO_JOBS:
        raise ConfigError(f"--task {task!r}: prime init writes jobs for {', '.join(DEMO_JOBS)}; for another task "
                          f"run it with one of these and edit [task] in job.toml")
    directory = Path(directory).resolve()
    job_file = directory / "job.toml"
    if job_file.exists() and not force:
        raise ConfigError(f"{job_file} exists; pass --force to write it again (the keys are kept either way)")
    if metrics_port is not None and not 1 <= metrics_port <= 65535 - trainers:
        raise ConfigError(f"--metrics-port {metrics_port}: ports {metrics_port}-{metrics_port + trainers} "
                          f"(the coordinator's and one per trainer) must lie within 1-65535")
    rounds = rounds if rounds is not None else (10 if task == "stdlib-lm" else 20)
    if rounds < 1:
        raise ConfigError(f"--rounds {rounds}: run at least one round")
    coordinator_dir = directory / "coordinator"
    coordinator_key = Identity.load_or_create(coordinator_dir, "coordinator").public_key_hex
    names = [f"trainer-{i + 1:03d}" for i in range(trainers)]
    keys = {name: Identity.load_or_create(directory / name, name).public_key_hex for name in names}
    mqtt_url = f"mqtt://{host}:{broker_port}"
    config = demo_job(trainers, rounds, 2, mqtt_url, coordinator_key, keys, task=task,
                      job_id=re.sub(r"[^A-Za-z0-9_.-]", "-", f"{task}-{directory.name}")[:64])
    job_file.write_text(dump_toml(config))
    load_config(job_file)  # what the nodes will read must load; fail here, not in N processes
    coordinator_addr = f"{host}:{coordinator_port}"

    def metrics(index: int) -> list[str]:
        return [] if metrics_port is None else ["--metrics-port", str(metrics_port + index)]

    commands = {
        "broker": ["prime", "broker", "--listen", f"{host}:{broker_port}"],
        "coordinator": ["prime-coordinator", "--config", str(job_file), "--data-dir", str(coordinator_dir),
                        "--listen", coordinator_addr, *metrics(0)],
    }
    for i, name in enumerate(names, start=1):
        commands[name] = ["prime-trainer", "--node-id", name, "--config", str(job_file), "--coordinators",
                          coordinator_addr, "--data-dir", str(directory / name), *metrics(i)]
    return NetworkPlan(directory, job_file, coordinator_key, keys, commands)


def describe(plan: NetworkPlan) -> str:
    """What was written and how to run it, as ``prime init`` prints it."""
    lines = [f"prime init: {len(plan.trainer_keys)} trainers in {plan.directory}",
             f"  job       {plan.job_file}",
             f"  keys      coordinator {plan.coordinator_key[:16]}… in {plan.directory / 'coordinator'}"]
    lines += [f"            {name} {key[:16]}… in {plan.directory / name}" for name, key in plan.trainer_keys.items()]
    lines += ["", "Run each in its own terminal, in this order:"]
    lines += [f"  {line}" for line in plan.command_lines().values()]
    lines += ["", "Then: prime-coordinator status --data-dir {0}; prime report --data-dir {0} --out report".format(
        shlex.quote(str(plan.directory / "coordinator")))]
    return "\n".join(lines)
