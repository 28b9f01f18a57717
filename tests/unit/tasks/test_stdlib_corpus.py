"""The stdlib corpus: what counts as a module, the non-IID partition, held-out modules, bad files, windows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prime.core.errors import TaskError
from prime.tasks import stdlib_corpus as corpus


def write(root: Path, relative: str, text: str | bytes) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A small stdlib-like tree, with each kind of thing the scan must skip."""
    write(tmp_path, "alpha.py", "a = 1\n" * 50)
    write(tmp_path, "beta.py", "b = 2\n" * 30)
    write(tmp_path, "gamma.py", "c = 3\n" * 10)
    write(tmp_path, "pkg/__init__.py", "from .sub import x\n")
    write(tmp_path, "pkg/sub.py", "x = 'sub'\n" * 20)
    write(tmp_path, "pkg/tests/test_sub.py", "assert True\n")
    write(tmp_path, "json/__init__.py", "held = True\n" * 10)
    write(tmp_path, "test/test_alpha.py", "skipped\n")
    write(tmp_path, "lib-dynload/x.py", "skipped\n")
    write(tmp_path, "site-packages/thirdparty.py", "skipped\n")
    write(tmp_path, "_sysconfigdata__linux_x86_64-linux-gnu.py", "skipped\n")
    write(tmp_path, "README.txt", "not python\n")
    return tmp_path


def test_scan_finds_top_level_modules_and_skips_the_rest(fake_root: Path) -> None:
    modules = {m.name: m for m in corpus.scan(fake_root)}
    assert list(modules) == ["alpha", "beta", "gamma", "json", "pkg"]
    assert [p.name for p in modules["pkg"].files] == ["__init__.py", "sub.py"]
    assert modules["alpha"].size == len("a = 1\n" * 50)
    assert corpus.scan(fake_root) is corpus.scan(fake_root)  # cached per process


def test_held_out_modules_exist_in_the_stdlib() -> None:
    names = {m.name for m in corpus.scan()}
    assert set(corpus.HELD_OUT_MODULES) <= names
    _, held = corpus.split_modules(corpus.scan())
    assert [m.name for m in held] == sorted(corpus.HELD_OUT_MODULES)


def test_held_out_present_ones_are_used(fake_root: Path) -> None:
    training, held = corpus.split_modules(corpus.scan(fake_root))
    assert [m.name for m in held] == ["json"]
    assert "json" not in {m.name for m in training}


def test_held_out_fallback_is_about_five_percent_and_deterministic(tmp_path: Path) -> None:
    for i in range(40):
        write(tmp_path, f"mod{i:02d}.py", "x = 1\n" * (10 + i))
    modules = corpus.scan(tmp_path)
    training, held = corpus.split_modules(modules)
    total = sum(m.size for m in modules)
    assert 1 <= len(held) < len(modules) and training
    assert 0.05 * total <= sum(m.size for m in held) < 0.15 * total
    assert [m.name for m in corpus.split_modules(modules)[1]] == [m.name for m in held]
    assert {m.name for m in held} != {f"mod{i:02d}" for i in range(len(held))}  # not simply the first names


@pytest.mark.parametrize("count", [1, 4, 7])
def test_partition_of_the_stdlib(count: int) -> None:
    training, held = corpus.split_modules(corpus.scan())
    shards = corpus.partition(training, count)
    assert shards == corpus.partition(list(reversed(training)), count)  # deterministic, input order irrelevant
    names = [[m.name for m in shard] for shard in shards]
    flat = [n for shard in names for n in shard]
    assert len(flat) == len(set(flat))  # disjoint
    assert set(flat) == {m.name for m in training}  # covers every training module
    assert not set(flat) & {m.name for m in held}  # held-out never trains
    assert all(names) and len({frozenset(s) for s in names}) == count  # non-empty, different modules: non-IID
    sizes = [sum(m.size for m in shard) for shard in shards]
    assert max(sizes) <= 1.1 * min(sizes)  # balanced by bytes


def test_partition_greedy_order() -> None:
    modules = [corpus.Module(name, (), size) for name, size in [("a", 5), ("b", 4), ("c", 3), ("d", 3), ("e", 1)]]
    assert [[m.name for m in s] for s in corpus.partition(modules, 2)] == [["a", "d"], ["b", "c", "e"]]


def test_fewer_modules_than_shards_is_a_clear_error(fake_root: Path) -> None:
    training, _ = corpus.split_modules(corpus.scan(fake_root))
    with pytest.raises(TaskError, match=r"cannot cut 4 modules into 5 shards"):
        corpus.partition(training, 5)


def test_non_utf8_file_is_an_error_naming_it(fake_root: Path) -> None:
    bad = write(fake_root, "pkg/corrupt.py", b"x = '\xff\xfe truncated")
    modules = {m.name: m for m in corpus.scan(fake_root)}
    with pytest.raises(TaskError, match="not valid UTF-8") as info:
        corpus.read_modules([modules["pkg"]])
    assert str(bad) in str(info.value)


def test_unreadable_file_is_an_error_naming_it(fake_root: Path) -> None:
    modules = {m.name: m for m in corpus.scan(fake_root)}
    gone = fake_root / "beta.py"
    gone.unlink()  # vanished after the (cached) scan; chmod would not stop root
    with pytest.raises(TaskError, match="cannot read") as info:
        corpus.read_modules([modules["alpha"], modules["beta"]])
    assert str(gone) in str(info.value)


def test_missing_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="not a directory"):
        corpus.scan(tmp_path / "nowhere")
    with pytest.raises(TaskError, match="no Python modules"):
        corpus.scan(tmp_path)


def test_read_joins_files_in_order(fake_root: Path) -> None:
    modules = {m.name: m for m in corpus.scan(fake_root)}
    data = corpus.read_modules([modules["gamma"], modules["pkg"]])
    expected = corpus.SEPARATOR.join([b"c = 3\n" * 10, b"from .sub import x\n", b"x = 'sub'\n" * 20])
    assert data.dtype == torch.uint8 and bytes(data.numpy()) == expected


def test_windows_are_next_byte_views() -> None:
    tokens = torch.arange(103, dtype=torch.int64).to(torch.uint8)
    split = corpus.windows(tokens, 10)
    assert len(split) == 10 and split.x.shape == split.y.shape == (10, 10)
    assert split.x.dtype == split.y.dtype == torch.uint8
    assert split.x.untyped_storage().data_ptr() == tokens.untyped_storage().data_ptr()
    assert split.y.untyped_storage().data_ptr() == tokens.untyped_storage().data_ptr()
    for i in (0, 3, 9):
        assert split.x[i].tolist() == list(range(10 * i, 10 * i + 10))
        assert split.y[i].tolist() == list(range(10 * i + 1, 10 * i + 11))
    with pytest.raises(TaskError, match="too few"):
        corpus.windows(tokens[:10], 10)
