"""Checking an audit log: every line canonical, chained, in sequence and signed; the head matches.

Reads line by line with a bound on each line, so a hostile file costs at most one
``MAX_LINE_BYTES`` line of memory at a time. The key starts as the one given and follows
``key_rotated`` lines (each signed by the key it replaces). The first bad line is reported
by number with what is wrong; a log whose last lines were cut off fails on the signed head.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from prime.audit.log import (
    AUDIT_FILE, GENESIS, HEAD_FILE, KEY_ROTATED, MAX_LINE_BYTES, canonical, head_signed_bytes, line_hash,
    line_signed_bytes,
)
from prime.core.errors import SignatureError
from prime.core.identity import verify

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
_KEYS = {"seq", "at", "event", "fields", "prev", "hash", "sig"}


@dataclass
class AuditReport:
    path: str
    lines: int = 0
    ok: bool = True
    #: 1-based number of the first bad line (None: the file is fine, or the head is what is wrong).
    bad_line: int | None = None
    error: str | None = None
    events: Counter = field(default_factory=Counter)
    #: Public keys (hex) that signed, in order (more than one after a rotation).
    keys: list[str] = field(default_factory=list)
    #: The head names the line before the last: a crash between a line and its head (not an error).
    head_lags: bool = False

    def fail(self, line: int | None, error: str) -> "AuditReport":
        self.ok, self.bad_line, self.error = False, line, error
        return self

    def as_dict(self) -> dict:
        return {"path": self.path, "lines": self.lines, "ok": self.ok, "bad_line": self.bad_line,
                "error": self.error, "events": dict(sorted(self.events.items())), "keys": self.keys,
                "head_lags": self.head_lags}


class _BadLine(ValueError):
    pass


def _check_shape(raw: bytes) -> dict:
    try:
        line = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _BadLine(f"not JSON: {exc}") from None
    if not isinstance(line, dict) or set(line) != _KEYS:
        got = sorted(line) if isinstance(line, dict) else type(line).__name__
        raise _BadLine(f"expected exactly the keys {sorted(_KEYS)}, got {got}")
    if type(line["seq"]) is not int or not isinstance(line["at"], int | float) or isinstance(line["at"], bool) \
            or not math.isfinite(line["at"]):
        raise _BadLine("seq must be an integer and at a finite number")
    if not isinstance(line["event"], str) or not isinstance(line["fields"], dict):
        raise _BadLine("event must be a string and fields an object")
    for key, pattern in (("prev", _HEX64), ("hash", _HEX64), ("sig", _HEX128)):
        if not isinstance(line[key], str) or not pattern.fullmatch(line[key]):
            raise _BadLine(f"{key} is not lowercase hex of the right length")
    try:
        if canonical(line) != raw:
            raise _BadLine("not in canonical form (edited by hand?)")
    except ValueError as exc:  # NaN or another value canonical JSON does not allow
        raise _BadLine(f"not canonical JSON: {exc}") from None
    return line


def verify_log(data_dir: str | Path, public_key: bytes) -> AuditReport:
    """Check ``data_dir``'s audit log against ``public_key`` (the node's key when the log began)."""
    data_dir = Path(data_dir)
    path, head_path = data_dir / AUDIT_FILE, data_dir / HEAD_FILE
    report = AuditReport(str(path))
    key, prev, before_last = public_key, GENESIS, GENESIS
    report.keys.append(key.hex())
    if not path.exists():
        if head_path.exists():
            return report.fail(None, f"{path} is missing but {HEAD_FILE} says lines were written")
        return report
    with open(path, "rb") as fh:
        number = 0
        while True:
            raw = fh.readline(MAX_LINE_BYTES + 1)
            if not raw:
                break
            number += 1
            if len(raw) > MAX_LINE_BYTES:
                return report.fail(number, f"longer than {MAX_LINE_BYTES} bytes")
            if not raw.endswith(b"\n"):
                return report.fail(number, "torn: no newline at the end (a crash mid-write; the next append "
                                           "repairs it)")
            try:
                line = _check_shape(raw[:-1])
                if line["seq"] != number:
                    raise _BadLine(f"seq {line['seq']} where {number} was due (a line dropped, added or moved)")
                if line["prev"] != prev:
                    raise _BadLine("prev is not the previous line's hash (a line dropped, edited or moved)")
                expected = line_hash(line["seq"], line["at"], line["event"], line["fields"], line["prev"])
                if line["hash"] != expected:
                    raise _BadLine("hash does not match the line's content (edited)")
                try:
                    verify(key, line_signed_bytes(line["hash"]), bytes.fromhex(line["sig"]))
                except SignatureError:
                    raise _BadLine(f"signature is not key {key.hex()[:16]}…'s") from None
            except _BadLine as exc:
                return report.fail(number, str(exc))
            before_last, prev = prev, line["hash"]
            report.lines = number
            report.events[line["event"]] += 1
            if line["event"] == KEY_ROTATED:
                new_key = line["fields"].get("new_key")
                if not isinstance(new_key, str) or not _HEX64.fullmatch(new_key):
                    return report.fail(number, "key_rotated names no 64-hex new_key")
                key = bytes.fromhex(new_key)
                report.keys.append(new_key)
    return _check_head(report, head_path, key, prev, before_last)


def _check_head(report: AuditReport, head_path: Path, key: bytes, last_hash: str, before_last: str) -> AuditReport:
    if report.lines == 0 and not head_path.exists():
        return report
    try:
        raw = head_path.read_bytes()[:4096]
        head = json.loads(raw)
        seq, digest, sig = int(head["seq"]), str(head["hash"]), bytes.fromhex(str(head["sig"]))
    except FileNotFoundError:
        if report.lines == 1:  # a crash between the first line and the first head
            report.head_lags = True
            return report
        return report.fail(None, f"{HEAD_FILE} is missing: cannot tell whether lines were cut off the end")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return report.fail(None, f"{HEAD_FILE} is unreadable: {exc}")
    try:
        verify(key, head_signed_bytes(seq, digest), sig)
    except SignatureError:
        return report.fail(None, f"{HEAD_FILE} is not signed by key {key.hex()[:16]}…")
    if seq == report.lines and digest == last_hash:
        return report
    if seq == report.lines - 1 and digest == before_last:
        report.head_lags = True  # a crash between the last line and its head
        return report
    return report.fail(None, f"{HEAD_FILE} says the log ends at line {seq}, the file has {report.lines} lines "
                             "(lines cut off the end, or the log replaced)")
