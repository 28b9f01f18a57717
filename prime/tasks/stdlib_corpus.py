"""A text corpus every Python install ships: the standard library's own ``.py`` files.

The unit of data is a top-level module: a ``name.py`` file directly under the root, or a
package directory ``name/`` with every ``.py`` file below it. Shards are whole modules
(``partition``), so trainers see different code (asyncio vs email vs tkinter): a non-IID
split by source, the way federated data is split in practice. A fixed set of modules
(``HELD_OUT_MODULES``) is validation only and never in a training shard.

Skipped, because they would dominate or distort the corpus rather than add Python code:
``test``/``tests`` (at any depth: ~half the stdlib by bytes, huge generated data files and
deliberately malformed sources), ``idlelib``, ``lib2to3`` and ``turtledemo`` (apps, fixers and
their test data), ``ensurepip`` (vendored wheels), ``site-packages`` (third-party code),
``__pycache__``, and any entry whose name is not a Python identifier: directories like
``config-3.11-x86_64-linux-gnu`` or ``lib-dynload`` (build and binary artifacts) and the
generated, platform-specific ``_sysconfigdata_*-linux-gnu.py``.

The corpus depends on the Python version: participants of one job should run the same
minor version, or point ``--data-path`` at one shared copy of a stdlib.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from prime.core.datasets import Split
from prime.core.errors import TaskError
from prime.tasks.balance import balanced_shards

SKIP_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "lib2to3", "__pycache__", "turtledemo", "ensurepip"})
#: Validation-only modules; all are in both the 3.11 and 3.12 standard libraries.
HELD_OUT_MODULES: tuple[str, ...] = ("argparse", "calendar", "csv", "fractions", "json", "textwrap")
#: When a data root has none of ``HELD_OUT_MODULES``: the share of its bytes held out instead.
FALLBACK_HELD_OUT_FRACTION = 0.05
SEPARATOR = b"\n\n"


@dataclass(frozen=True)
class Module:
    """One top-level module: its name, its files (sorted) and their total size in bytes."""

    name: str
    files: tuple[Path, ...]
    size: int


def default_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _package_files(package: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(package):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and d.isidentifier()]
        files += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
    return sorted(files, key=lambda p: p.relative_to(package).as_posix())


@functools.lru_cache(maxsize=16)
def _scan(root: str) -> tuple[Module, ...]:
    modules = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
        for entry in entries:
            path = Path(entry.path)
            if entry.is_file() and entry.name.endswith(".py") and path.stem.isidentifier():
                files = [path]
            elif entry.is_dir() and entry.name not in SKIP_DIRS and entry.name.isidentifier():
                files = _package_files(path)
            else:
                continue
            if files:
                modules.append(Module(path.stem, tuple(files), sum(f.stat().st_size for f in files)))
    except OSError as e:
        raise TaskError(f"cannot read the corpus directory {root}: {e}") from e
    return tuple(modules)


def scan(root: Path | None = None) -> tuple[Module, ...]:
    """Every top-level module under ``root`` (default: this interpreter's stdlib), sorted by name.
    Cached per process: trainers and the coordinator read the same root many times."""
    root = Path(root) if root is not None else default_root()
    if not root.is_dir():
        raise TaskError(f"corpus root {root} is not a directory (expected a Python standard library or a tree of .py files)")
    modules = _scan(str(root.resolve()))
    if not modules:
        raise TaskError(f"no Python modules (.py files or packages) found under {root}")
    return modules


def split_modules(modules: tuple[Module, ...] | list[Module]) -> tuple[list[Module], list[Module]]:
    """(training, held out). The held-out modules are those of ``HELD_OUT_MODULES`` present; if
    none is (a user's own corpus), a deterministic ~5% of the bytes: modules in the order of the
    SHA-256 of their names (a fixed, name-only order, not biased to the alphabet) until 5% is
    reached, at least one module and never all of them."""
    held = [m for m in modules if m.name in HELD_OUT_MODULES]
    if not held and len(modules) > 1:
        budget = FALLBACK_HELD_OUT_FRACTION * sum(m.size for m in modules)
        total = 0
        for m in sorted(modules, key=lambda m: hashlib.sha256(m.name.encode()).digest()):
            if held and (total >= budget or len(held) == len(modules) - 1):
                break
            held.append(m)
            total += m.size
    names = {m.name for m in held}
    return [m for m in modules if m.name not in names], sorted(held, key=lambda m: m.name)


def partition(modules: list[Module] | tuple[Module, ...], count: int) -> list[list[Module]]:
    """Whole modules into ``count`` shards balanced by bytes (``balance.balanced_shards``)."""
    return balanced_shards(modules, count, size=lambda m: m.size, name=lambda m: m.name, what="modules")


def read_modules(modules: list[Module] | tuple[Module, ...]) -> torch.Tensor:
    """The bytes of every file of ``modules``, in order, joined by a blank line, as one uint8 tensor.
    A file that cannot be read or is not UTF-8 (truncated, corrupt) is a ``TaskError`` naming it."""
    parts = []
    for m in modules:
        for path in m.files:
            try:
                data = path.read_bytes()
            except OSError as e:
                raise TaskError(f"cannot read corpus file {path}: {e}") from e
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise TaskError(f"corpus file {path} is not valid UTF-8 (truncated or corrupt?): {e}") from e
            parts.append(data)
    return torch.frombuffer(bytearray(SEPARATOR.join(parts)), dtype=torch.uint8)


def windows(tokens: torch.Tensor, seq_len: int) -> Split:
    """Next-byte samples: windows of seq_len + 1 bytes at stride seq_len, x the first seq_len bytes,
    y the same shifted by one. Both are uint8 views of ``tokens`` (no copy of the corpus; indexing a
    batch copies just the batch)."""
    if seq_len < 1:
        raise TaskError(f"seq_len must be at least 1, got {seq_len}")
    n = (len(tokens) - 1) // seq_len
    if n < 1:
        raise TaskError(f"{len(tokens)} bytes of text are too few for one sequence of {seq_len} (+1) bytes")
    w = tokens[: n * seq_len + 1].unfold(0, seq_len + 1, seq_len)
    return Split(w[:, :-1], w[:, 1:])
