"""What a manifest pins: the files each shard reads (digits, stdlib-lm), their digests, the task's
source, and ``prime manifest build`` / ``check`` naming the file that differs."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from prime.core.config import dump_toml, parse_config
from prime.core.errors import ConfigError, TaskError
from prime.core.manifest import data_differences
from prime.manifests import build_manifest, load_manifest
from prime.cli import main as prime_main
from prime.tasks import Shard, task_of
from prime.tasks.datafiles import shard_digests, task_source


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def corpus(root: Path) -> Path:
    """A tiny stdlib-like tree: top-level modules and a package."""
    root.mkdir(parents=True)
    for name in ("alpha", "beta", "gamma", "delta"):
        (root / f"{name}.py").write_text(f"# {name}\n" + f"x_{name} = {len(name)}\n" * 50)
    (root / "pkg").mkdir()
    (root / "pkg" / "__init__.py").write_text("from .core import *\n" * 30)
    (root / "pkg" / "core.py").write_text("def f():\n    return 1\n" * 80)
    return root


def test_digits_shards_read_the_file_scikit_learn_ships():
    task = task_of(parse_config({}))
    source = task.data_source(Shard(0, 3))
    assert source.name == "scikit-learn digits" and list(source.files) == ["digits.csv.gz"]
    assert source.files["digits.csv.gz"].is_file()
    digests = [shard_digests(task, Shard(i, 3)) for i in range(3)]
    assert digests[0] == digests[2] == {"digits.csv.gz": sha(source.files["digits.csv.gz"])}


def test_stdlib_lm_shards_name_their_files_relative_to_the_root_and_a_change_is_named(tmp_path):
    root = corpus(tmp_path / "lib")
    task = task_of(parse_config({"task": {"name": "stdlib-lm"}}))
    shards = [task.data_source(Shard(i, 2, root)).files for i in range(2)]
    names = sorted(n for files in shards for n in files)
    assert not set(shards[0]) & set(shards[1])
    assert set(names) <= {"alpha.py", "beta.py", "gamma.py", "delta.py", "pkg/__init__.py", "pkg/core.py"}
    before = {i: shard_digests(task, Shard(i, 2, root)) for i in range(2)}
    victim = next(iter(shards[1]))
    changed = tmp_path / "copy"
    shutil.copytree(root, changed)
    (changed / victim).write_text((changed / victim).read_text() + "# changed\n")
    after = shard_digests(task, Shard(1, 2, changed))
    manifest = build_manifest(parse_config({"task": {"name": "stdlib-lm"}, "data": {"num_shards": 2}}), data_path=root)
    assert manifest.shards["1"] == before[1] and manifest.dataset.name == "python-stdlib-source"
    assert data_differences(after, manifest, 1) == [
        f"data file {victim}: here {sha(changed / victim)}, manifest {before[1][victim]}"]
    (changed / victim).unlink()
    assert data_differences(shard_digests(task, Shard(1, 2, changed)), manifest, 1)[0].startswith(
        f"data file {victim}: here (missing)")


def test_the_task_source_is_the_module_that_defines_it():
    import prime.tasks.digits as digits

    name, digest = task_source(task_of(parse_config({})))
    assert name == "prime/tasks/digits.py" and digest == sha(Path(digits.__file__))


def test_a_task_without_a_data_source_cannot_be_pinned(tmp_path):
    from prime.tasks import TaskSpec, register_task
    from prime.tasks.digits import spec as digits

    register_task(TaskSpec(**{**digits.__dict__, "name": "no-files", "data_source": None}))
    with pytest.raises(TaskError, match="does not say which files its shards read"):
        build_manifest(parse_config({"task": {"name": "no-files"}}))


def test_manifest_build_and_check_from_the_cli(tmp_path, capsys):
    root = corpus(tmp_path / "lib")
    config = parse_config({"job_id": "lm", "task": {"name": "stdlib-lm"}, "data": {"num_shards": 2}}, "job.toml")
    (tmp_path / "job.toml").write_text(dump_toml(config))
    out = tmp_path / "manifest.json"
    assert prime_main(["manifest", "build", "--config", str(tmp_path / "job.toml"), "--data-path", str(root),
                       "--compute-target", "2x cpu", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["digest"] == hashlib.sha256(out.read_bytes()).hexdigest() and printed["shards"] == 2
    args = ["manifest", "check", "--config", str(tmp_path / "job.toml"), "--manifest", str(out), "--shard", "0",
            "--data-path"]
    assert prime_main([*args, str(root)]) == 0
    victim = next(iter(task_of(config).data_source(Shard(0, 2, root)).files))
    (root / victim).write_text("changed = True\n")
    assert prime_main([*args, str(root)]) == 1
    assert f"data file {victim}: here {sha(root / victim)}, manifest" in capsys.readouterr().out


def test_a_manifest_of_another_job_is_refused_naming_both_files(tmp_path):
    out = tmp_path / "m.json"
    from prime.core.manifest import canonical

    out.write_bytes(canonical(build_manifest(parse_config({"job_id": "a"}))))
    with pytest.raises(ConfigError, match=r"m.json is not job.toml's manifest: it has job_id 'a' \(the job's is 'b'\)"):
        load_manifest(out, parse_config({"job_id": "b"}, "job.toml"))
    out.write_bytes(b"{")
    with pytest.raises(ConfigError, match="m.json: manifest is not JSON"):
        load_manifest(out, parse_config({"job_id": "b"}, "job.toml"))
