"""prime vs Flower 1.41.0 (deployment mode), side by side: seconds and protocol overhead per round.

The same MLP (the ``digits`` task's) on the same non-IID digits split
(Dirichlet α=0.5, 20% held out), the same optimizer, batch order, rounds and local
epochs, train-only (the server evaluates the global model on the held-out set after
each round, as prime's coordinator does), for 2, 4 and 8 trainers:

- prime: ``prime.demo.LocalNetwork`` (broker, DHT node, coordinator and N trainers as
  separate processes on 127.0.0.1).
- Flower: ``flower-superlink --insecure --disable-runtime-dependency-installation``
  and N ``flower-supernode --insecure`` processes on 127.0.0.1, the Flower app in
  ``benchmarks/flower_app`` (ServerApp + ClientApp) submitted with ``flwr run`` to that
  SuperLink; telemetry and update checks off, no network beyond loopback.

For every round after the first: wall = time between consecutive server-side commits
(aggregate + evaluate), training = the slowest trainer's local training time,
protocol = wall − training. Medians are printed, then the ratio line.

Flower 1.41 cannot share prime's environment (flwr pins typer<0.21, amqtt needs
typer>=0.24), so it runs from its own venv: build it once with ``--setup``
(``build/flower-venv``, from ``benchmarks/requirements-flower.txt``).

    python benchmarks/flower_compare.py --setup                # once: build/flower-venv
    python benchmarks/flower_compare.py [--trainers 2,4,8] [--rounds 6] [--local-epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = ROOT / "benchmarks" / "flower_app"
FLOWER_VENV = ROOT / "build" / "flower-venv"
REQUIREMENTS = ROOT / "benchmarks" / "requirements-flower.txt"
sys.path.insert(0, str(ROOT / "benchmarks"))

from round_overhead import measure as measure_prime  # noqa: E402
from round_overhead import round_stats  # noqa: E402


def setup_flower_venv(venv: Path) -> None:
    """Create ``venv`` with flwr 1.41.0, torch and prime (``--no-deps``: amqtt's typer pin clashes)."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    print(f"Flower venv ready: {venv}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"Flower process exited early (code {proc.returncode}); see {log}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    sys.exit(f"nothing listening on 127.0.0.1:{port} after {timeout}s; see {log}")


def measure_flower(trainers: int, rounds: int, local_epochs: int, workdir: Path, venv: Path) -> dict[str, float]:
    bin_dir = venv / "bin"
    home = workdir / "flwr-home"
    home.mkdir(parents=True)
    port = _free_port()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "bench"\n\n'
        f'[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(venv),
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PYTHONUNBUFFERED": "1",
    }
    logs = workdir / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []

    def spawn(name: str, *argv: str) -> subprocess.Popen:
        with open(logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen([str(bin_dir / argv[0]), *argv[1:]], stdout=log, stderr=subprocess.STDOUT,
                                    env=env, cwd=workdir, start_new_session=True)
        procs.append(proc)
        return proc

    results = workdir / "flower-results.json"
    started = time.monotonic()
    try:
        link = spawn("superlink", "flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
                     "--host", "127.0.0.1", "--port", str(port))
        _wait_port(port, link, logs / "superlink.log")
        for i in range(trainers):
            spawn(f"supernode-{i}", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
                  "--host", "127.0.0.1", "--port", str(_free_port()),
                  "--node-config", f"partition-id={i} num-partitions={trainers}")
        run_config = (f"num-server-rounds={rounds} local-epochs={local_epochs} num-trainers={trainers} "
                      f"results-path=\"{results}\"")
        submitted = subprocess.run([str(bin_dir / "flwr"), "run", str(APP_DIR), "bench", "--run-config", run_config],
                                   env=env, cwd=workdir, capture_output=True, text=True, timeout=120)
        if submitted.returncode != 0:
            sys.exit(f"flwr run failed ({submitted.returncode}):\n{submitted.stdout}\n{submitted.stderr}")
        deadline = time.monotonic() + 120 + 30 * rounds
        while not results.exists():
            if time.monotonic() > deadline:
                sys.exit(f"Flower run timed out; logs in {logs}")
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                sys.exit(f"a Flower process exited (code {dead[0].returncode}); logs in {logs}")
            time.sleep(0.2)
        time.sleep(0.2)  # the ServerApp writes the file in one call; let it close
        total = time.monotonic() - started
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    rows = json.loads(results.read_text())["rounds"][1:]  # row 0: the initial model, before round 1
    return {**round_stats(rows), "total": total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trainers", default="2,4,8", help="comma-separated trainer counts (default 2,4,8)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--local-epochs", type=int, default=2)
    p.add_argument("--flower-venv", type=Path, default=FLOWER_VENV)
    p.add_argument("--setup", action="store_true", help="build the Flower venv and exit")
    p.add_argument("--skip-flower", action="store_true", help="prime only")
    args = p.parse_args()
    if args.setup:
        return setup_flower_venv(args.flower_venv)
    if not args.skip_flower and not (args.flower_venv / "bin" / "flower-superlink").exists():
        sys.exit(f"no Flower venv at {args.flower_venv}; run: python benchmarks/flower_compare.py --setup")
    counts = [int(n) for n in args.trainers.split(",")]
    print(f"flower_compare: digits MLP, Dirichlet(0.5) non-IID, {args.rounds} rounds x {args.local_epochs} local "
          f"epochs, train-only; medians over rounds 2..{args.rounds}")
    print(f"{'system':>7} {'trainers':>8} {'s/round':>8} {'training':>9} {'protocol':>9} {'p90':>7} "
          f"{'accuracy':>9} {'job s':>7}")
    results = []
    for n in counts:
        with tempfile.TemporaryDirectory(prefix="prime-bench-") as tmp:
            t0 = time.monotonic()
            prime = measure_prime(n, args.rounds, args.local_epochs, Path(tmp))
            prime["total"] = time.monotonic() - t0
        rows = [("prime", prime)]
        if not args.skip_flower:
            with tempfile.TemporaryDirectory(prefix="flower-bench-") as tmp:
                rows.append(("flower", measure_flower(n, args.rounds, args.local_epochs, Path(tmp), args.flower_venv)))
        for name, r in rows:
            print(f"{name:>7} {n:>8} {r['wall']:>8.3f} {r['training']:>9.3f} {r['protocol']:>9.3f} "
                  f"{r['protocol_p90']:>7.3f} {r['accuracy']:>9.4f} {r['total']:>7.1f}", flush=True)
        results.append((n, dict(rows)))
    for n, r in results:
        if "flower" in r:
            pr, fl = r["prime"], r["flower"]
            print(f"round_overhead ({n} trainers): prime {pr['protocol']:.3f} s, flower {fl['protocol']:.3f} s, "
                  f"ratio {fl['protocol'] / pr['protocol']:.0f}x; round time prime {pr['wall']:.3f} s, "
                  f"flower {fl['wall']:.3f} s, ratio {fl['wall'] / pr['wall']:.1f}x")
        else:
            print(f"round_overhead ({n} trainers): prime {r['prime']['protocol']:.3f} s (flower skipped)")


if __name__ == "__main__":
    main()
