"""``prime state``: make a state key, and re-seal a node's state under a new one.

``keygen`` writes a new key file (mode 0600, never over an existing file). ``rotate-key``
re-seals a stopped node's data dir (``prime/rotation.py``): without ``--old-key-file`` it seals
plaintext state for the first time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prime.core.errors import PrimeError
from prime.rotation import rotate_data_dir
from prime.sealing import load_key_file, write_key_file


def keygen(args: argparse.Namespace) -> int:
    try:
        key = write_key_file(args.out)
    except PrimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"key_file": str(args.out), "key_id": key.key_id.hex()}))
    return 0


def rotate_key(args: argparse.Namespace) -> int:
    try:
        old = load_key_file(args.old_key_file) if args.old_key_file else None
        new = load_key_file(args.new_key_file)
        report = rotate_data_dir(args.data_dir, old, new)
    except PrimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _audit_rotation(args.data_dir, old, new, report.as_dict())
    print(json.dumps({"data_dir": str(args.data_dir), "old_key_id": old.key_id.hex() if old else None,
                      "new_key_id": new.key_id.hex(), **report.as_dict()}))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="state_command", required=True)
    k = sub.add_parser("keygen", help="write a new state key file (mode 0600; refuses to overwrite)")
    k.add_argument("--out", type=Path, required=True, help="key file to create, e.g. state.key")
    k.set_defaults(func=keygen)
    r = sub.add_parser("rotate-key", help="re-seal a stopped node's checkpoints / snapshots under a new key")
    r.add_argument("--data-dir", type=Path, required=True, help="the trainer's or coordinator's --data-dir")
    r.add_argument("--old-key-file", type=Path, help="the key the state is sealed with (omit: seal plaintext state)")
    r.add_argument("--new-key-file", type=Path, required=True, help="the key to seal it with")
    r.set_defaults(func=rotate_key)


def _audit_rotation(data_dir: Path, old, new, report: dict) -> None:
    """A ``key_rotation`` line in the node's audit log, signed with its node key (if it has one)."""
    from prime.audit import AuditLog, operator_name
    from prime.core.identity import KEY_FILE, Identity

    if not (Path(data_dir) / KEY_FILE).exists():
        return
    log = AuditLog.open(data_dir, Identity.load(Path(data_dir) / KEY_FILE))
    try:
        log.append("key_rotation", old_key_id=old.key_id.hex() if old else None, new_key_id=new.key_id.hex(),
                   user=operator_name(), **report)
    finally:
        log.close()
