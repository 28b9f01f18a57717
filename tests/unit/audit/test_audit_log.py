"""The audit log: lines chain, sign and verify; appends from two processes interleave safely;
a torn tail is repaired and audited; a cut-off end is refused at open."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from prime.audit import AUDIT_FILE, HEAD_FILE, AuditLog, verify_log
from prime.cli import main as prime_main
from prime.core.errors import AuditError
from prime.core.identity import Identity


@pytest.fixture
def node(tmp_path):
    return tmp_path, Identity.load_or_create(tmp_path, "node")


def test_lines_chain_sign_and_verify(node):
    data_dir, identity = node
    with AuditLog.open(data_dir, identity) as log:
        first = log.append("admission", node_key=b"\x01" * 32, round=1)
        second = log.append("refusal", reason="harmful", detail="x" * 5000, score=float("nan"))
    assert (first["seq"], second["seq"]) == (1, 2) and second["prev"] == first["hash"]
    assert first["fields"]["node_key"] == "01" * 32 and len(second["fields"]["detail"]) == 2000
    report = verify_log(data_dir, identity.public_key)
    assert report.ok and report.lines == 2 and report.events == {"admission": 1, "refusal": 1}
    other = Identity.generate()
    assert verify_log(data_dir, other.public_key).bad_line == 1


def test_reopen_continues_the_chain_and_rotation_hands_over_the_key(node):
    data_dir, identity = node
    AuditLog.open(data_dir, identity).append("one")
    new = Identity.generate()
    with AuditLog.open(data_dir, identity) as log:
        log.rotate(new)
        log.append("after_rotation")
    report = verify_log(data_dir, identity.public_key)
    assert report.ok and report.lines == 3 and report.keys == [identity.public_key_hex, new.public_key_hex]


def test_bad_event_names_and_fields_are_refused(node):
    with AuditLog.open(*node) as log:
        with pytest.raises(AuditError, match="event name"):
            log.append("Bad Event")
        with pytest.raises(AuditError, match="not JSON data"):
            log.append("ok", thing=object())


def test_torn_tail_is_cut_and_audited(node):
    data_dir, identity = node
    AuditLog.open(data_dir, identity).append("one")
    with open(data_dir / AUDIT_FILE, "ab") as fh:
        fh.write(b'{"seq":2,"at":1.0,"ev')  # a crash mid-write
    assert verify_log(data_dir, identity.public_key).bad_line == 2
    AuditLog.open(data_dir, identity).append("two")
    report = verify_log(data_dir, identity.public_key)
    assert report.ok and report.events == {"one": 1, "audit_repaired": 1, "two": 1}


def test_head_lag_after_a_crash_is_accepted_but_a_cut_off_end_is_not(node):
    data_dir, identity = node
    log = AuditLog.open(data_dir, identity)
    log.append("one")
    head = (data_dir / HEAD_FILE).read_bytes()
    log.append("two")
    log.close()
    (data_dir / HEAD_FILE).write_bytes(head)  # as if the process died between line 2 and its head
    report = verify_log(data_dir, identity.public_key)
    assert report.ok and report.head_lags
    AuditLog.open(data_dir, identity).close()  # the writer brings the head up to date
    assert not verify_log(data_dir, identity.public_key).head_lags
    lines = (data_dir / AUDIT_FILE).read_bytes().splitlines(keepends=True)
    (data_dir / AUDIT_FILE).write_bytes(lines[0])  # cut the last line off
    assert not verify_log(data_dir, identity.public_key).ok
    with pytest.raises(AuditError, match="lines were removed or replaced"):
        AuditLog.open(data_dir, identity)


def test_two_processes_append_to_one_chain(node):
    data_dir, identity = node
    code = ("import sys; from prime.audit import AuditLog; from prime.core.identity import Identity; "
            "log = AuditLog.open(sys.argv[1], Identity.load_or_create(sys.argv[1]));"
            "[log.append('from_child', i=i) for i in range(40)]")
    child = subprocess.Popen([sys.executable, "-c", code, str(data_dir)])
    with AuditLog.open(data_dir, identity) as log:
        for i in range(40):
            log.append("from_parent", i=i)
    assert child.wait(timeout=60) == 0
    report = verify_log(data_dir, identity.public_key)
    assert report.ok and report.events == {"from_child": 40, "from_parent": 40}, report


def test_cli_verify_exit_codes(node, capsys):
    data_dir, identity = node
    with AuditLog.open(data_dir, identity) as log:
        log.append("one")
        log.append("two")
    assert prime_main(["audit", "verify", "--data-dir", str(data_dir)]) == 0
    assert "2 lines" in capsys.readouterr().out
    path = data_dir / AUDIT_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    edited = json.loads(lines[0])
    edited["fields"] = {"forged": True}
    path.write_bytes(json.dumps(edited, sort_keys=True, separators=(",", ":")).encode() + b"\n" + lines[1])
    assert prime_main(["audit", "verify", "--data-dir", str(data_dir), "--key", identity.public_key_hex]) == 1
    assert "INVALID at line 1: hash does not match" in capsys.readouterr().err
    assert prime_main(["audit", "verify", "--data-dir", str(data_dir), "--key", "zz"]) == 2


def test_a_file_that_is_not_an_audit_log_is_refused_without_reading_it_whole(node):
    data_dir, identity = node
    (data_dir / AUDIT_FILE).write_bytes(b"x" * (1 << 20))
    with pytest.raises(AuditError, match="no line break"):
        AuditLog.open(data_dir, identity)
    (data_dir / AUDIT_FILE).write_bytes(b'{"not": "an audit line"}\n')
    with pytest.raises(AuditError, match="the last line is not an audit line"):
        AuditLog.open(data_dir, identity)
