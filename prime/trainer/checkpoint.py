"""Trainer checkpoints: model, optimizer and data position, crash-safe on disk.

Each checkpoint is ``NAME.pt`` (``torch.save`` of tensors and plain values, loaded
back with ``weights_only=True`` so a checkpoint can never run code) plus
``NAME.sha256``. Both are written atomically (temp, fsync, rename), the digest
last, so a checkpoint without a matching digest is treated as torn and skipped.

With a state key (``prime/sealing.py``) ``NAME.pt`` is sealed (SecretBox) and the digest is of
the plaintext inside, so a key rotation rewrites only ``NAME.pt``. One that fails its MAC is
skipped for the previous good one and counted; one sealed with another key (or sealed with no
key set, or plaintext with a key set) stops the node with an error naming it, changing nothing.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any

import torch

from prime.atomic import write_atomic
from prime.core.errors import SealedFileError, TrainerError
from prime.sealing import HEADER_BYTES, Sealer

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
AUTO_PREFIX = "round-"


class CheckpointStore:
    """Named checkpoints in one directory; automatic ones (``round-N``) are pruned to the newest N."""

    def __init__(self, root: str | os.PathLike, keep: int = 5, sealer: Sealer | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.sealer = sealer or Sealer()
        #: Checkpoints passed over by ``latest_good`` (MAC or digest failed, unloadable).
        self.skipped = 0

    def _check_name(self, name: str) -> str:
        if not _NAME.match(name):
            raise TrainerError(f"checkpoint name {name!r} must be 1-64 of [A-Za-z0-9_.-]")
        return name

    def save(self, name: str, state: dict[str, Any]) -> Path:
        self._check_name(name)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        path = self.root / f"{name}.pt"
        write_atomic(path, self.sealer.seal(data))
        write_atomic(self.root / f"{name}.sha256", hashlib.sha256(data).hexdigest().encode())
        self._prune()
        return path

    def load(self, name: str) -> dict[str, Any]:
        """Load and verify a checkpoint; raise ``TrainerError`` if missing or corrupt (a MAC that
        fails included), ``StateKeyError`` if it and the state key do not go together."""
        self._check_name(name)
        path = self.root / f"{name}.pt"
        try:
            raw = path.read_bytes()
            expected = (self.root / f"{name}.sha256").read_text().strip()
        except FileNotFoundError:
            raise TrainerError(f"no checkpoint named {name!r} in {self.root}") from None
        try:
            data = self.sealer.open(raw, f"checkpoint {path}")
        except SealedFileError as exc:
            raise TrainerError(str(exc)) from None
        if hashlib.sha256(data).hexdigest() != expected:
            raise TrainerError(f"checkpoint {path} is corrupt (digest mismatch)")
        try:
            return torch.load(io.BytesIO(data), weights_only=True)
        except Exception as exc:  # weights_only refuses anything but tensors and plain values
            raise TrainerError(f"checkpoint {path} cannot be loaded safely: {exc}") from None

    def list(self) -> list[str]:
        """Names of complete checkpoints (those with a digest), oldest first."""
        names = [p.stem for p in self.root.glob("*.sha256") if (self.root / f"{p.stem}.pt").exists()]
        return sorted(names, key=lambda n: (self.root / f"{n}.pt").stat().st_mtime_ns)

    def latest_good(self) -> tuple[str, dict[str, Any]] | None:
        """The newest checkpoint that verifies, skipping corrupt ones."""
        for name in reversed(self.list()):
            try:
                return name, self.load(name)
            except TrainerError:
                self.skipped += 1
                continue
        return None

    def check_key(self) -> None:
        """Before anything starts: ``StateKeyError`` naming the first checkpoint (newest first) that
        the state key cannot open (sealed with another key, sealed with none set, or plaintext
        with one set). Reads headers only; changes nothing."""
        for name in reversed(self.list()):
            path = self.root / f"{name}.pt"
            try:
                with open(path, "rb") as fh:
                    head = fh.read(HEADER_BYTES)
            except FileNotFoundError:
                continue
            self.sealer.check(head, f"checkpoint {path}")

    def metrics(self) -> dict[str, object]:
        return {**self.sealer.metrics(), "checkpoints_skipped": self.skipped}

    def _prune(self) -> None:
        auto = [n for n in self.list() if n.startswith(AUTO_PREFIX)]
        for name in auto[: max(0, len(auto) - self.keep)]:
            for suffix in (".pt", ".sha256"):
                (self.root / f"{name}{suffix}").unlink(missing_ok=True)
