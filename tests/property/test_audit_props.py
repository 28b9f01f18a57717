"""Any edit, drop, reorder or truncation of an audit log is detected; the verifier never crashes."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prime.audit import AUDIT_FILE, HEAD_FILE, AuditLog, verify_log
from prime.audit.log import canonical, line_hash
from prime.core.identity import Identity

IDENTITY = Identity.from_seed(b"\x07" * 32)
LINES = 6


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[list[bytes], bytes]:
    data_dir = tmp_path_factory.mktemp("audit")
    with AuditLog.open(data_dir, IDENTITY) as log:
        for i in range(LINES):
            log.append(["admission", "refusal", "promotion"][i % 3], round=i, key=bytes([i]) * 32, ok=i % 2 == 0,
                       score=i / 3, reason=f"r{i}")
    return (data_dir / AUDIT_FILE).read_bytes().splitlines(keepends=True), (data_dir / HEAD_FILE).read_bytes()


def _verify(lines: list[bytes], head: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / AUDIT_FILE).write_bytes(b"".join(lines))
        (Path(tmp) / HEAD_FILE).write_bytes(head)
        return verify_log(tmp, IDENTITY.public_key)


def test_pristine_log_verifies(pristine):
    assert _verify(*pristine).ok


_values = st.one_of(st.integers(-10**6, 10**6), st.text(max_size=8), st.booleans(), st.none(),
                    st.floats(allow_nan=False, allow_infinity=False))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, LINES - 1), key=st.sampled_from(["seq", "at", "event", "fields", "prev", "hash", "sig"]),
       value=_values, rehash=st.booleans())
def test_editing_any_field_of_any_line_is_detected(pristine, index, key, value, rehash):
    lines, head = pristine
    line = json.loads(lines[index])
    if key == "fields":
        new = {**line["fields"], "reason": value}
    elif key in ("prev", "hash", "sig"):
        new = ("f" if line[key][0] != "f" else "e") + line[key][1:]
    else:
        new = value
    if new == line[key] or (key == "fields" and new.get("reason") == line["fields"].get("reason")):
        return
    line[key] = new
    if rehash and key not in ("hash", "sig"):  # an attacker recomputes the hash: the signature still fails
        try:
            line["hash"] = line_hash(line["seq"], line["at"], line["event"], line["fields"], line["prev"])
        except (TypeError, ValueError):
            pass
    edited = list(lines)
    edited[index] = canonical(line) + b"\n"
    report = _verify(edited, head)
    assert not report.ok and report.bad_line is not None and report.bad_line <= index + 1, report


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_dropping_reordering_or_truncating_is_detected(pristine, data):
    lines, head = pristine
    how = data.draw(st.sampled_from(["drop", "swap", "truncate"]))
    if how == "drop":
        i = data.draw(st.integers(0, LINES - 1))
        changed = lines[:i] + lines[i + 1:]
    elif how == "swap":
        i, j = sorted(data.draw(st.lists(st.integers(0, LINES - 1), min_size=2, max_size=2, unique=True)))
        changed = list(lines)
        changed[i], changed[j] = changed[j], changed[i]
    else:
        changed = lines[:data.draw(st.integers(0, LINES - 2))]  # cut two or more lines off the end
    assert not _verify(changed, head).ok


@settings(max_examples=150, deadline=None)
@given(junk=st.binary(max_size=300), head=st.binary(max_size=100))
def test_verifier_survives_junk(junk, head):
    report = _verify([junk], head)
    assert not report.ok or junk == b""
