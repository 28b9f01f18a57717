"""Documents for a language-model fine-tune: local text and JSON-lines files, or standard-library modules.

A *document* is one ``.txt`` file, one ``{"text": …}`` line of a ``.jsonl`` file, or one ``.py``
file of a named standard-library module. Documents are split by a hash of their name (never by
position, so adding a file does not move the others): ``held_out_fraction`` of them (at least
one) are the held-out set, the rest are cut into trainer shards, whole documents balanced by
bytes (largest first into the smallest shard), so trainers see different documents. Each part
is tokenized, its documents joined by a separator, and cut into next-token windows.

Everything read from disk is bounded: a file larger than ``MAX_FILE_BYTES`` or a JSON line that
is not an object with a string ``text`` is a ``TaskError`` naming the file and line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from prime.core.datasets import Split
from prime.core.errors import TaskError
from prime.tasks.balance import balanced_shards
from prime.tasks import stdlib_corpus as corpus

#: Largest single data file read (a JSON-lines file of many documents included).
MAX_FILE_BYTES = 1 << 30
SUFFIXES = (".txt", ".jsonl")


@dataclass(frozen=True)
class Document:
    name: str  # where it came from: "path" or "path:line" (the split hashes it)
    text: bytes  # UTF-8


def _jsonl_documents(path: Path, data: bytes) -> Iterable[Document]:
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise TaskError(f"{path}:{number}: not a JSON line: {exc}") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise TaskError(f'{path}:{number}: each line must be an object with a string "text" field')
        yield Document(f"{path.name}:{number}", record["text"].encode("utf-8"))


def _file_documents(path: Path) -> list[Document]:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise TaskError(f"{path}: {size} bytes, more than the {MAX_FILE_BYTES} a data file may have")
        data = path.read_bytes()
    except OSError as exc:
        raise TaskError(f"cannot read data file {path}: {exc.strerror}") from None
    if path.suffix == ".jsonl":
        return list(_jsonl_documents(path, data))
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TaskError(f"{path} is not UTF-8 text: {exc}") from None
    return [Document(path.name, data)]


def file_documents(paths: Iterable[str | Path]) -> list[Document]:
    """Documents of ``.txt`` and ``.jsonl`` files; a directory contributes those directly in it (sorted)."""
    documents: list[Document] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
            if not files:
                raise TaskError(f"data directory {path} has no .txt or .jsonl files")
        elif path.is_file():
            if path.suffix not in SUFFIXES:
                raise TaskError(f"data file {path}: expected a .txt or .jsonl file")
            files = [path]
        else:
            raise TaskError(f"data path {path} does not exist")
        for file in files:
            documents += _file_documents(file)
    return [d for d in documents if d.text]


def stdlib_documents(modules: Iterable[str], root: Path | None = None) -> list[Document]:
    """Each ``.py`` file of the named top-level standard-library modules, one document per file."""
    found = {m.name: m for m in corpus.scan(root)}
    missing = [name for name in modules if name not in found]
    if missing:
        raise TaskError(f"no standard-library module(s) {missing} under {root or corpus.default_root()}")
    top = (Path(root) if root is not None else corpus.default_root()).resolve()
    documents = []
    for name in modules:
        for path in found[name].files:
            try:
                text = path.read_bytes()
                text.decode("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise TaskError(f"cannot read corpus file {path} as UTF-8 text: {exc}") from None
            documents.append(Document(path.relative_to(top).as_posix(), text))
    return [d for d in documents if d.text]


def _rank(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def split(documents: list[Document], held_out_fraction: float) -> tuple[list[Document], list[Document]]:
    """(training, held out): documents in the order of the SHA-256 of their names, the first ones
    held out until ``held_out_fraction`` of the bytes is reached (at least one, never all)."""
    if len(documents) < 2:
        raise TaskError(f"{len(documents)} document(s): need at least 2 (one to train on, one to hold out)")
    ordered = sorted(documents, key=lambda d: _rank(d.name))
    budget, total, held = held_out_fraction * sum(len(d.text) for d in documents), 0, []
    for doc in ordered:
        if held and (total >= budget or len(held) == len(documents) - 1):
            break
        held.append(doc)
        total += len(doc.text)
    names = {d.name for d in held}
    return [d for d in documents if d.name not in names], held


def partition(documents: list[Document], count: int) -> list[list[Document]]:
    """Whole documents into ``count`` shards balanced by bytes (deterministic)."""
    return balanced_shards(documents, count, size=lambda d: len(d.text), name=lambda d: d.name,
                           what="training documents")


Tokenize = Callable[[bytes], list[int] | torch.Tensor]


def byte_tokens(text: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(text), dtype=torch.uint8)


def token_stream(documents: list[Document], tokenize: Tokenize, separator: list[int]) -> torch.Tensor:
    """Every document's tokens, joined by ``separator`` (int32; uint8 when all are bytes)."""
    parts: list[torch.Tensor] = []
    sep = torch.tensor(separator, dtype=torch.int64)
    for i, doc in enumerate(documents):
        if i:
            parts.append(sep)
        parts.append(torch.as_tensor(tokenize(doc.text)).to(torch.int64))
    stream = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
    return stream.to(torch.uint8) if len(stream) and int(stream.max()) < 256 and tokenize is byte_tokens \
        else stream.to(torch.int32)


def windows(tokens: torch.Tensor, seq_len: int) -> Split:
    return corpus.windows(tokens, seq_len)


def evenly(data: Split, most: int) -> Split:
    """At most ``most`` samples of ``data``, evenly spaced (bounds the coordinator's evaluation)."""
    n, k = len(data), min(len(data), most)
    if k == n:
        return data
    idx = torch.arange(k) * n // k
    return Split(data.x[idx], data.y[idx])
