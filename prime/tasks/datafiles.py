"""Content digests of what a job trains on: each file a shard reads, and the task's own source.

The job manifest (``prime/core/manifest.py``) pins these; ``prime manifest build`` computes them
for every shard, and a trainer computes its own shard's before training and compares. Files are
hashed in 1 MiB pieces (never read whole), and a file whose size and mtime did not change since
it was last hashed in this process is not read again (a trainer checks every round).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
from pathlib import Path

from prime.core.errors import TaskError
from prime.tasks.spec import DataSource, Shard, Task

_CHUNK = 1 << 20
#: What a missing file "hashes" to in a comparison, so the difference names it.
MISSING = "(missing)"
_cache: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 hex of a file's bytes (cached per path, size and mtime)."""
    try:
        stat = os.stat(path)
        key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
        if key in _cache:
            return _cache[key]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as exc:
        raise TaskError(f"cannot read data file {path}: {exc.strerror or exc}") from None
    _cache[key] = h.hexdigest()
    return _cache[key]


def require_source(task: Task, shard: Shard) -> DataSource:
    """The task's data source for ``shard``, or an error saying it has none."""
    source = task.data_source(shard)
    if source is None:
        raise TaskError(f"task {task.name!r} does not say which files its shards read (TaskSpec.data_source); "
                        f"a manifest cannot pin its data")
    return source


def shard_digests(task: Task, shard: Shard) -> dict[str, str]:
    """Each file shard ``shard`` reads (its name in the task's data source) → SHA-256 hex.
    A file that is missing is reported as ``(missing)``, so the comparison names it."""
    out = {}
    for name, path in require_source(task, shard).files.items():
        out[name] = file_digest(path) if Path(path).exists() else MISSING
    return out


def task_source(task: Task) -> tuple[str, str]:
    """(file name, SHA-256 hex) of the source that defines the task: the module of its model builder."""
    module = sys.modules.get(getattr(task.spec.build_model, "__module__", ""), None)
    path = inspect.getsourcefile(module) if module is not None else None
    if path is None:
        raise TaskError(f"task {task.name!r}: cannot find the source file that defines it")
    name = module.__name__.replace(".", "/") + ("/__init__.py" if Path(path).name == "__init__.py" else ".py")
    return name, file_digest(Path(path))
