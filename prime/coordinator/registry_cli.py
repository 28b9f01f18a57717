"""``prime registry list|show|diff|export|promote|annotate --data-dir D``: the model registry by hand.

Reads are read-only and safe while the coordinator runs. ``promote``, ``annotate`` and
``export`` are operator commands: each is signed into the node's audit log with the data
dir's key (so they need ``D/node.key``), with what it did or why it was refused; a promotion
past failing gates needs ``--force`` and is audited as forced.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from prime.audit import AuditLog, operator_name
from prime.coordinator import registry
from prime.coordinator.gates import STAGES
from prime.coordinator.registry_export import FORMATS, export
from prime.coordinator.status import DB_NAME, open_read_only
from prime.core.errors import CoordinatorError, PrimeError
from prime.core.identity import KEY_FILE, Identity


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="registry_command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--data-dir", type=Path, required=True, help="the coordinator's data dir")
        return p

    p = command("list", "every model version: stage, round, parent, contributors, metrics")
    p.add_argument("--stage", choices=STAGES, help="only versions in this stage")
    p.add_argument("--json", action="store_true")
    p = command("show", "one version: lineage, metrics, metadata, promotions")
    p.add_argument("version", help="a number (3 or v3), latest, or a stage (its newest version)")
    p.add_argument("--json", action="store_true")
    p = command("diff", "two versions: lineage, metrics and how far the weights moved")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--no-weights", action="store_true", help="skip reading both models to compare their weights")
    p.add_argument("--json", action="store_true")
    p = command("export", "write a version's weights and model card (audited)")
    p.add_argument("version")
    p.add_argument("--out", type=Path, required=True,
                   help="weights file (safetensors), or a directory for --format dir / transformers")
    p.add_argument("--format", choices=sorted(FORMATS), default="safetensors",
                   help="safetensors (+ card beside it), dir (a directory prime.load_model opens), transformers "
                        "(a directory transformers' AutoModelForCausalLM opens: stdlib-lm with SwiGLU), merged-lora "
                        "(a LoRA job's adapters merged into its base, a transformers directory)")
    p.add_argument("--merge-lora", dest="format", action="store_const", const="merged-lora",
                   help="the same as --format merged-lora")
    p = command("promote", "move a version to staging, production or archived (gates must pass; audited)")
    p.add_argument("version")
    p.add_argument("--to", required=True, choices=("staging", "production", "archived"))
    p.add_argument("--force", action="store_true", help="promote past failing gates (recorded as forced)")
    p.add_argument("--reason", default="", help="why, for the registry and the audit log")
    p = command("annotate", "set free metadata on a version: KEY=VALUE (JSON or text; KEY= removes it)")
    p.add_argument("version")
    p.add_argument("pairs", nargs="+", metavar="KEY=VALUE")


def run(args: argparse.Namespace) -> int:
    try:
        return _COMMANDS[args.registry_command](args)
    except PrimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:  # e.g. locked past the 30 s timeout by a long commit
        print(f"error: {args.data_dir / DB_NAME}: {exc}; nothing was changed, try again", file=sys.stderr)
        return 2


# -- reads --------------------------------------------------------------------------------
def _entries(data_dir: Path) -> list[registry.VersionEntry]:
    _, db = open_read_only(data_dir)
    try:
        return registry.versions(db)
    finally:
        db.close()


def _metric_names(entries: list[registry.VersionEntry]) -> list[str]:
    return list(dict.fromkeys(k for e in entries for k in e.lineage.metrics))


def list_cmd(args: argparse.Namespace) -> int:
    entries = [e for e in _entries(args.data_dir) if args.stage in (None, e.stage)]
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=2))
        return 0
    names = _metric_names(entries)[:4]
    print(f"{'version':>7}  {'stage':<10} {'round':>5} {'parent':>6} {'trainers':>8}  "
          + "  ".join(f"{n[:13]:>13}" for n in names))
    for e in entries:
        metrics = "  ".join(f"{e.lineage.metrics[n]:>13.4f}" if isinstance(e.lineage.metrics.get(n), int | float)
                            else f"{'-':>13}" for n in names)
        parent = "-" if e.lineage.parent is None else f"v{e.lineage.parent}"
        print(f"{'v' + str(e.version):>7}  {e.stage:<10} {e.lineage.round:>5} {parent:>6} "
              f"{len(e.lineage.contributors):>8}  {metrics}")
    return 0


def show_cmd(args: argparse.Namespace) -> int:
    entry = registry.resolve(_entries(args.data_dir), args.version)
    if args.json:
        print(json.dumps(entry.as_dict(), indent=2))
        return 0
    lin = entry.lineage
    lines = [f"v{entry.version}  stage {entry.stage}  round {lin.round}  parent "
             f"{'-' if lin.parent is None else f'v{lin.parent}'}",
             f"  model {entry.digest}  {entry.size} bytes",
             f"  task {lin.task} {json.dumps(lin.task_options, sort_keys=True)}",
             f"  strategy {lin.strategy}  config digest {lin.config_digest}",
             "  metrics " + (", ".join(f"{k} {v:.6g}" if isinstance(v, int | float) else f"{k} {v}"
                                       for k, v in lin.metrics.items()) or "(not evaluated)"),
             f"  contributors ({len(lin.contributors)}):"]
    for c in lin.contributors:
        score = "-" if c.get("score") is None else f"{c['score']:+.4g}"
        lines.append(f"    {c['name']:<16} {c['key'][:16]}…  samples {c['samples']}  score {score}  "
                     f"share {c['share']}")
    lines.append(f"  metadata {json.dumps(entry.metadata, sort_keys=True)}")
    for p in entry.promotions:
        lines.append(f"  {p.from_stage} -> {p.to_stage} by {p.by}{' (FORCED)' if p.forced else ''}: {p.reason}")
    print("\n".join(lines))
    return 0


def diff_cmd(args: argparse.Namespace) -> int:
    entries = _entries(args.data_dir)
    a, b = registry.resolve(entries, args.a), registry.resolve(entries, args.b)
    out = diff(args.data_dir, a, b, weights=not args.no_weights)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    lines = [f"v{a.version} ({a.stage}, round {a.lineage.round}) -> v{b.version} ({b.stage}, round {b.lineage.round})"]
    def num(v: Any) -> str:
        return f"{v:.6g}" if isinstance(v, int | float) else "-"

    for name, (x, y, delta) in out["metrics"].items():
        shown = "-" if delta is None else f"{delta:+.6g}"
        lines.append(f"  {name:<16} {num(x):>12} -> {num(y):<12} ({shown})")
    for key in ("task", "strategy", "config_digest"):
        if out[key]["changed"]:
            lines.append(f"  {key} changed: {out[key]['a']} -> {out[key]['b']}")
    c = out["contributors"]
    lines.append(f"  contributors: {len(c['both'])} in both, only in v{a.version}: {', '.join(c['only_a']) or '-'}; "
                 f"only in v{b.version}: {', '.join(c['only_b']) or '-'}")
    if "weights" in out:
        w = out["weights"]
        lines.append(f"  weights: relative L2 change {w['relative_l2']:.6g} over {w['tensors']} tensors; most moved:")
        for name, rel in w["most_changed"]:
            lines.append(f"    {name:<40} {rel:.6g}")
    print("\n".join(lines))
    return 0


def diff(data_dir: Path, a: registry.VersionEntry, b: registry.VersionEntry, *, weights: bool) -> dict[str, Any]:
    """What differs between two versions: metrics (with deltas), lineage, contributors, weights."""
    ma, mb = a.lineage.metrics, b.lineage.metrics
    metrics = {}
    for name in dict.fromkeys([*ma, *mb]):
        x, y = ma.get(name), mb.get(name)
        numeric = all(isinstance(v, int | float) for v in (x, y))
        metrics[name] = (x, y, y - x if numeric else None)
    names_a = {c["name"] for c in a.lineage.contributors}
    names_b = {c["name"] for c in b.lineage.contributors}
    out: dict[str, Any] = {
        "a": a.version, "b": b.version, "stages": [a.stage, b.stage], "rounds": [a.lineage.round, b.lineage.round],
        "metrics": metrics,
        "contributors": {"both": sorted(names_a & names_b), "only_a": sorted(names_a - names_b),
                         "only_b": sorted(names_b - names_a)},
    }
    for key in ("task", "strategy", "config_digest"):
        x, y = getattr(a.lineage, key), getattr(b.lineage, key)
        out[key] = {"a": x, "b": y, "changed": x != y}
    if weights:
        out["weights"] = _weight_diff(data_dir, a.digest, b.digest)
    return out


def _weight_diff(data_dir: Path, digest_a: str, digest_b: str) -> dict[str, Any]:
    from prime.blobs.store import BlobStore
    from prime.core import tensors
    from prime.tasks.exported import MAX_WEIGHTS_BYTES

    blobs = BlobStore(Path(data_dir) / "blobs")
    sa, sb = (tensors.decode_state(bytearray(blobs.read_bytes(d)), max_bytes=MAX_WEIGHTS_BYTES)
              for d in (digest_a, digest_b))
    if set(sa) != set(sb) or any(sa[k].shape != sb[k].shape for k in sa):
        raise CoordinatorError("the two versions' tensors differ in names or shapes: not the same model")
    changed, total_diff, total_norm = [], 0.0, 0.0
    for name in sorted(sa):
        x, y = sa[name].double(), sb[name].double()
        d, n = float((y - x).norm()), float(x.norm())
        total_diff, total_norm = total_diff + d * d, total_norm + n * n
        changed.append((name, d / n if n else d))
    changed.sort(key=lambda t: -t[1])
    return {"tensors": len(sa), "relative_l2": (total_diff ** 0.5) / (total_norm ** 0.5 or 1.0),
            "most_changed": changed[:5]}


# -- operator commands (audited) ----------------------------------------------------------
def _audit_log(data_dir: Path) -> AuditLog:
    key = data_dir / KEY_FILE
    if not (data_dir / DB_NAME).exists():
        raise CoordinatorError(f"no coordinator database at {data_dir / DB_NAME}; is --data-dir right?")
    if not key.exists():
        raise CoordinatorError(f"{key} is missing: operator commands are signed into the node's audit log "
                               "with its key; run this where the coordinator's data dir is")
    return AuditLog.open(data_dir, Identity.load(key, "coordinator"))


def _operator(args: argparse.Namespace, action) -> int:
    """Run ``action`` and sign what the operator asked and what came of it into the audit log."""
    log = _audit_log(args.data_dir)
    asked = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
             if k not in ("func", "registry_command", "data_dir")}
    try:
        try:
            result = action(log)
        except PrimeError as exc:
            log.append("operator_command", command=f"registry {args.registry_command}", args=asked,
                       user=operator_name(), outcome=f"refused: {exc}")
            raise
        log.append("operator_command", command=f"registry {args.registry_command}", args=asked, user=operator_name(),
                   outcome="ok")
    finally:
        log.close()
    print(json.dumps(result, indent=2))
    return 0


def promote_cmd(args: argparse.Namespace) -> int:
    def action(log: AuditLog) -> dict:
        db = registry.open_writable(args.data_dir / DB_NAME)
        try:
            done = registry.promote(db, args.version, args.to, force=args.force, reason=args.reason, who=operator_name())
        finally:
            db.close()
        for p in done:
            log.append("promotion", **p.as_fields())
        return {"promotions": [p.as_fields() for p in done]}

    return _operator(args, action)


def annotate_cmd(args: argparse.Namespace) -> int:
    values: dict[str, Any] = {}
    for pair in args.pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CoordinatorError(f"{pair!r}: write KEY=VALUE (KEY= removes the key)")
        if raw == "":
            values[key] = None
            continue
        try:
            values[key] = json.loads(raw)
        except ValueError:
            values[key] = raw

    def action(log: AuditLog) -> dict:
        db = registry.open_writable(args.data_dir / DB_NAME)
        try:
            entry = registry.annotate(db, args.version, values)
        finally:
            db.close()
        return {"version": entry.version, "metadata": entry.metadata}

    return _operator(args, action)


def export_cmd(args: argparse.Namespace) -> int:
    def action(log: AuditLog) -> dict:
        entry = registry.resolve(_entries(args.data_dir), args.version)
        return export(args.data_dir, entry, args.out, args.format)

    return _operator(args, action)


_COMMANDS = {"list": list_cmd, "show": show_cmd, "diff": diff_cmd, "export": export_cmd, "promote": promote_cmd,
             "annotate": annotate_cmd}
