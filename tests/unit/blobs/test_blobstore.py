"""BlobStore: content-addressed, atomic writes, verified reads, no path traversal."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from prime.core.errors import BlobError
from prime.blobs.store import BlobStore


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def temp_files(store: BlobStore) -> list[Path]:
    return list(store.tmp_dir.iterdir())


def test_put_and_read(store: BlobStore) -> None:
    data = os.urandom(3000)
    digest = store.put_bytes(data)
    assert digest == sha(data)
    assert store.has(digest) and store.size(digest) == 3000
    assert store.read_bytes(digest) == data
    assert store.path(digest).read_bytes() == data
    assert store.put_bytes(data) == digest  # idempotent
    assert temp_files(store) == []


def test_put_file_streams(store: BlobStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(data)
    digest = store.put_file(src)
    assert digest == sha(data) and store.read_bytes(digest) == data
    with pytest.raises(BlobError, match="cannot read"):
        store.put_file(tmp_path / "missing")


def test_writer_is_invisible_until_commit(store: BlobStore) -> None:
    data = b"hello " * 1000
    with store.open_writer() as writer:
        writer.write(data[:10])
        writer.write(data[10:])
        assert not store.has(sha(data)) and len(temp_files(store)) == 1
        digest = writer.commit()
    assert digest == sha(data) and store.read_bytes(digest) == data
    assert temp_files(store) == []


def test_writer_discards_on_error(store: BlobStore) -> None:
    with pytest.raises(RuntimeError), store.open_writer() as writer:
        writer.write(b"partial")
        raise RuntimeError("peer vanished")
    assert temp_files(store) == [] and not store.has(sha(b"partial"))


def test_expected_digest_mismatch_discards(store: BlobStore) -> None:
    expected = sha(b"the real thing")
    with pytest.raises(BlobError, match="digest mismatch"), store.open_writer(expected_digest=expected) as w:
        w.write(b"something else")
        w.commit()
    assert not store.has(expected) and not store.has(sha(b"something else"))
    assert temp_files(store) == []


def test_writer_size_cap(store: BlobStore) -> None:
    with pytest.raises(BlobError, match="limit"), store.open_writer(max_bytes=10) as w:
        w.write(b"x" * 11)
    assert temp_files(store) == []


def test_failed_rename_leaves_nothing_visible(store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        store.put_bytes(b"data")
    assert not store.has(sha(b"data")) and temp_files(store) == []


def test_corruption_on_disk_detected(store: BlobStore) -> None:
    digest = store.put_bytes(b"original")
    store.path(digest).chmod(0o644)
    store.path(digest).write_bytes(b"tampered")
    with pytest.raises(BlobError, match="corrupt"):
        store.read_bytes(digest)


def test_missing_blob(store: BlobStore) -> None:
    digest = sha(b"never stored")
    assert not store.has(digest)
    for call in (store.path, store.size, store.read_bytes):
        with pytest.raises(BlobError, match="not in the store"):
            call(digest)


@pytest.mark.parametrize(
    "bad",
    ["../../etc/passwd", "a" * 63, "a" * 65, "A" * 64, "g" * 64, "/" + "a" * 63, "a" * 64 + "\n", "", None, 7],
)
def test_bad_digests_refused(store: BlobStore, bad: object) -> None:
    for call in (store.has, store.path, store.size, store.read_bytes):
        with pytest.raises(BlobError, match="invalid blob digest"):
            call(bad)  # type: ignore[arg-type]
    if bad is not None:  # None means "no expected digest"
        with pytest.raises(BlobError, match="invalid blob digest"):
            store.open_writer(expected_digest=bad)  # type: ignore[arg-type]


def test_stale_temp_files_removed_on_open(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    old, fresh = store.tmp_dir / "blob-old.part", store.tmp_dir / "blob-new.part"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(old, (0, 0))
    BlobStore(tmp_path)
    assert not old.exists() and fresh.exists()


@pytest.mark.parametrize("sizes", [[0], [3, 0, 5], [3 * 1024 * 1024, 2 * 1024 * 1024 + 7]])
def test_put_parts_stores_the_concatenation(tmp_path, sizes):
    store = BlobStore(tmp_path)
    parts = [os.urandom(n) for n in sizes]
    joined = b"".join(parts)
    digest = store.put_parts([memoryview(p) for p in parts])
    assert digest == sha(joined) and store.read_bytes(digest) == joined


def test_map_private_is_a_writable_copy_on_write_view(tmp_path):
    store = BlobStore(tmp_path)
    data = os.urandom(100_000)
    digest = store.put_bytes(data)
    view = store.map_private(digest)
    assert bytes(view) == data and not view.readonly
    view[0] ^= 0xFF  # private: the file is untouched
    assert store.read_bytes(digest) == data


def test_map_private_refuses_a_corrupt_file_and_discard_removes_it(tmp_path):
    store = BlobStore(tmp_path)
    digest = store.put_bytes(b"abc" * 1000)
    path = store.path(digest)
    path.chmod(0o644)
    path.write_bytes(b"xbc" + b"abc" * 999)
    with pytest.raises(BlobError, match="corrupt"):
        store.map_private(digest)
    assert bytes(store.map_private(digest, verify=False))[:3] == b"xbc"
    store.discard(digest)
    assert not store.has(digest)


def test_put_verified_keeps_bytes_it_is_handed(tmp_path):
    store = BlobStore(tmp_path)
    data = os.urandom(1000)
    path = store.put_verified(sha(data), data)
    assert path.read_bytes() == data and store.put_verified(sha(data), b"ignored: already here") == path
    assert list(store.tmp_dir.iterdir()) == []
