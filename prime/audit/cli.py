"""``prime audit verify --data-dir D [--key HEX]``: check a node's audit log.

Without ``--key`` the log is checked against the public half of ``D/node.key``; give
``--key`` (the coordinator_key of the job, a trainer's admitted key) to check a copy of a
log without its node's secret key. Exit 0 when the log verifies, 1 naming the first bad
line, 2 when the command cannot run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from prime.audit.verify import verify_log
from prime.core.errors import PrimeError
from prime.core.identity import KEY_FILE, Identity


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", required=True)
    v = sub.add_parser("verify", help="check a node's audit log: chain, sequence, signatures, signed head")
    v.add_argument("--data-dir", type=Path, required=True, help="the node's data dir (holds audit.jsonl)")
    v.add_argument("--key", help="the node's public key (64 hex); default: the public half of DATA_DIR/node.key")
    v.add_argument("--json", action="store_true", help="one JSON object instead of a sentence")


def run(args: argparse.Namespace) -> int:
    try:
        if args.key is not None:
            if not re.fullmatch(r"[0-9a-fA-F]{64}", args.key):
                raise PrimeError(f"--key must be 64 hex digits (prime keygen prints one), not {args.key!r}")
            key = bytes.fromhex(args.key)
        else:
            if not (args.data_dir / KEY_FILE).exists():
                raise PrimeError(f"no {KEY_FILE} in {args.data_dir}: give the node's public key with --key")
            key = Identity.load(args.data_dir / KEY_FILE).public_key
        report = verify_log(args.data_dir, key)
    except PrimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    elif report.ok:
        events = ", ".join(f"{name} {count}" for name, count in sorted(report.events.items())) or "none"
        lag = " (head lags one line: a crash after the last append)" if report.head_lags else ""
        print(f"{report.path}: {report.lines} lines, chain, sequence, signatures and head valid{lag}\n"
              f"  events: {events}")
    if not report.ok:
        where = f"line {report.bad_line}" if report.bad_line else "head"
        print(f"{report.path}: INVALID at {where}: {report.error} ({report.lines} lines verified before it)",
              file=sys.stderr)
        return 1
    return 0
