"""Key rotation: re-seal a node's state under a new key, so that a crash at any moment leaves
every file readable with one of the two keys, and running it again finishes the job.

Trainer checkpoints (``checkpoints/NAME.pt``) are rewritten in place, one atomic rename each;
their ``NAME.sha256`` is of the plaintext and does not change. A coordinator's sealed blobs are
content-addressed, so re-sealing gives new names: every new blob is written (and synced) first,
then one SQLite transaction points the ``server_state`` rows at them and records the new key's
id, and only then are the old blobs removed. Before that transaction the database still names
the old key and its blobs, all present; after it, the new ones. A second run after a crash skips
what is already under the new key and removes what is left of the old.

Without an old key the same steps seal plaintext state (checkpoints, snapshot images, server
state) for the first time. A file that neither key opens is an error naming it, found before
anything is written. Stop the node first: it must not write state while this runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prime.atomic import write_atomic
from prime.blobs.store import BlobStore
from prime.core.errors import SealedFileError, StateKeyError
from prime.sealing import HEADER_BYTES, MAGIC, StateKey, looks_sealed, open_bytes, seal_bytes, sealed_key_id

#: A SQLite database image starts with this (sqlite.org/fileformat): a plaintext snapshot blob.
SQLITE_MAGIC = b"SQLite format 3\x00"
CHECKPOINTS_DIR = "checkpoints"
DB_NAME = "coordinator.sqlite"
BLOBS_DIR = "blobs"


@dataclass
class RotationReport:
    resealed: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    #: Files left as they were: damaged (MAC fails, truncated) and not needed by the state.
    damaged: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"resealed": len(self.resealed), "already_under_new_key": len(self.already),
                "removed": len(self.removed), "damaged_left_alone": self.damaged}


#: Called after each durable step (a file written, the transaction, a removal): tests crash here.
Step = Callable[[str], None]


def _kind(head: bytes, old: StateKey | None, new: StateKey) -> str:
    """``new``, ``old`` (to re-seal), ``plain``, ``short`` (truncated) or ``foreign`` (another key)."""
    if len(head) < len(MAGIC) or (looks_sealed(head) and sealed_key_id(head) is None):
        return "short" if looks_sealed(head) else "plain"
    if not looks_sealed(head):
        return "plain"
    kid = sealed_key_id(head)
    if kid == new.key_id:
        return "new"
    return "old" if old is not None and kid == old.key_id else "foreign"


def _foreign(path: object, head: bytes, old: StateKey | None, new: StateKey) -> StateKeyError:
    kid = sealed_key_id(head)
    given = f"--old-key-file's key id {old.key_id.hex()}" if old else "no --old-key-file was given"
    return StateKeyError(f"{path} is sealed with key id {kid.hex() if kid else '?'}, neither the new key's "
                         f"({new.key_id.hex()}) nor the old one ({given}); nothing was changed")


def rotate_data_dir(data_dir: str | Path, old: StateKey | None, new: StateKey,
                    step: Step = lambda what: None) -> RotationReport:
    """Re-seal every sealed file of a trainer's or coordinator's ``data_dir`` from ``old`` to ``new``."""
    data_dir = Path(data_dir)
    if old is not None and old.key_id == new.key_id:
        raise StateKeyError("the old and the new state key are the same key; nothing to do")
    checkpoints, database = data_dir / CHECKPOINTS_DIR, data_dir / DB_NAME
    if not checkpoints.is_dir() and not database.is_file():
        raise StateKeyError(f"{data_dir} holds neither trainer checkpoints ({CHECKPOINTS_DIR}/) nor a coordinator "
                            f"database ({DB_NAME}); is --data-dir right?")
    report = RotationReport()
    if checkpoints.is_dir():
        _rotate_checkpoints(checkpoints, old, new, step, report)
    if database.is_file():
        _rotate_coordinator(data_dir, old, new, step, report)
    return report


def _rotate_checkpoints(root: Path, old: StateKey | None, new: StateKey, step: Step,
                        report: RotationReport) -> None:
    plan: list[tuple[Path, str]] = []
    for path in sorted(root.glob("*.pt")):
        with open(path, "rb") as fh:
            head = fh.read(HEADER_BYTES)
        kind = _kind(head, old, new)
        if kind == "foreign":
            raise _foreign(f"checkpoint {path}", head, old, new)
        plan.append((path, kind))
    for path, kind in plan:
        if kind == "new":
            report.already.append(str(path))
            continue
        if kind == "short":
            report.damaged.append(str(path))
            continue
        data = path.read_bytes()
        try:
            plaintext = open_bytes(old, data, f"checkpoint {path}") if kind == "old" else data
        except SealedFileError:
            report.damaged.append(str(path))  # a MAC failure stays one: the node skips it, as before
            continue
        sidecar = path.with_suffix(".sha256")
        if sidecar.exists() and sidecar.read_text().strip() != hashlib.sha256(plaintext).hexdigest():
            report.damaged.append(str(path))  # torn before we came: leave it for the node to skip
            continue
        write_atomic(path, seal_bytes(new, plaintext))
        report.resealed.append(str(path))
        step(f"checkpoint {path.name}")


def _rotate_coordinator(data_dir: Path, old: StateKey | None, new: StateKey, step: Step,
                        report: RotationReport) -> None:
    from prime.coordinator.sealed_state import record_key_id, recorded_key_id
    from prime.coordinator.store import CoordinatorStore

    store = CoordinatorStore(data_dir / DB_NAME)
    try:
        recorded = recorded_key_id(store)
        expected = old.key_id.hex() if old else None
        committed = recorded == new.key_id.hex()  # a run that crashed after its transaction: clean up
        if not committed and recorded != expected:
            given = f"--old-key-file has key id {expected}" if old else "no --old-key-file was given"
            raise StateKeyError(f"{store.path}: this coordinator's state is sealed with key id {recorded}, but "
                                f"{given}; nothing was changed")
        blobs = BlobStore(data_dir / BLOBS_DIR)
        referenced = {d for (d,) in store.db.execute("SELECT digest FROM server_state")}
        todo: list[str] = []  # digests to re-seal (before the transaction) or remove (after it)
        for path in sorted(blobs.objects_dir.glob("*/*")):
            digest = path.name
            with open(path, "rb") as fh:
                head = fh.read(max(HEADER_BYTES, len(SQLITE_MAGIC)))
            kind = _kind(head, old, new)
            if kind == "new":
                report.already.append(digest)
            elif kind == "old" or (old is None and (head.startswith(SQLITE_MAGIC) or digest in referenced)):
                todo.append(digest)
            elif digest in referenced and not committed:
                raise _foreign(f"server state blob {path}", head, old, new)
            # anything else is not ours to seal: models and updates the network serves, a peer's junk
        if not committed:
            renamed: dict[str, str] = {}
            for digest in todo:
                data = blobs.read_bytes(digest)  # re-verified against its digest
                try:
                    plaintext = open_bytes(old, data, f"blob {digest}") if old else data
                except SealedFileError:
                    if digest in referenced:
                        raise  # the state needs it: stop with nothing changed
                    report.damaged.append(digest)
                    continue
                renamed[digest] = blobs.put_bytes(seal_bytes(new, plaintext))
                report.resealed.append(digest)
                step(f"blob {digest[:12]}")
            store.db.execute("BEGIN IMMEDIATE")
            try:
                store.db.executemany("UPDATE server_state SET digest=? WHERE digest=?",
                                     [(renamed[d], d) for d in sorted(referenced & set(renamed))])
                record_key_id(store, new)
                store.db.execute("COMMIT")
            except BaseException:
                store.db.execute("ROLLBACK")
                raise
            step("database")
        for digest in todo:
            if digest in report.damaged:
                continue
            blobs.discard(digest)
            report.removed.append(digest)
            step(f"removed {digest[:12]}")
    finally:
        store.close()
