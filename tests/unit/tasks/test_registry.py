"""Finding a task: built-in names, user entry points, the ``prime.tasks`` group, and clear errors."""

from __future__ import annotations

import sys
import textwrap
from importlib.metadata import EntryPoint

import pytest

from prime.core.config import load_config
from prime.core.errors import ConfigError, TaskError
from prime.tasks import TaskSpec, available_tasks, get_task_spec, register_task, task_of
from prime.tasks import registry

USER_TASK = '''
from prime.tasks import TaskOptions
from prime.tasks.digits import spec as digits
import dataclasses

class Options(TaskOptions):
    width: int = 8

spec = dataclasses.replace(digits, name="my-task", options=Options,
                           build_model=lambda options, seed: digits.build_model(digits.options(hidden=[options.width]), seed),
                           load_shard=lambda options, shard: digits.load_shard(digits.options(), shard),
                           load_validation=lambda options, path: digits.load_validation(digits.options(), path),
                           loss=lambda options, model, x, y: digits.loss(digits.options(), model, x, y),
                           evaluate=lambda options, model, data: digits.evaluate(digits.options(), model, data),
                           shard_units=lambda options, model: digits.shard_units(digits.options(), model))
not_a_spec = 42
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    package = tmp_path / "my_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text(textwrap.dedent(USER_TASK))
    (package / "broken.py").write_text("import module_that_does_not_exist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_pkg"
    for name in [m for m in sys.modules if m.startswith("my_pkg")]:
        del sys.modules[name]


def test_builtin_tasks_by_name():
    assert {"digits", "stdlib-lm"} <= set(available_tasks())
    assert get_task_spec("digits").name == "digits" and get_task_spec("stdlib-lm").name == "stdlib-lm"


def test_unknown_task_lists_the_available_ones():
    with pytest.raises(TaskError, match=r"unknown task 'mnist'; available: .*digits.*stdlib-lm"):
        get_task_spec("mnist")


def test_user_task_by_entry_point_trains_from_a_config_file(user_module, tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('[task]\nname = "my_pkg.tasks:spec"\n[task.options]\nwidth = 12\n')
    task = task_of(load_config(path))
    assert task.name == "my-task" and task.options.width == 12
    assert task.build_model(0).layers[0].out_features == 12


def test_entry_point_errors_name_the_entry_point_and_the_cause(user_module):
    with pytest.raises(TaskError, match=r"cannot import 'my_pkg.broken': ModuleNotFoundError: .*module_that_does_not_exist"):
        get_task_spec("my_pkg.broken:spec")
    with pytest.raises(TaskError, match=r"has no attribute 'nope'"):
        get_task_spec("my_pkg.tasks:nope")
    with pytest.raises(TaskError, match=r"is a int, not a prime.tasks.TaskSpec"):
        get_task_spec("my_pkg.tasks:not_a_spec")


def test_task_options_errors_name_key_and_file(user_module, tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('[task]\nname = "my_pkg.tasks:spec"\n[task.options]\nwidth = "wide"\n')
    with pytest.raises(ConfigError, match=rf"{path}: key 'task.options.width': Input should be a valid integer"):
        task_of(load_config(path))
    path.write_text('[task]\nname = "stdlib-lm"\n[task.options]\npreset = "tiny"\nwidht = 3\n')
    with pytest.raises(ConfigError, match=rf"{path}: unknown key 'task.options.widht' \(task 'stdlib-lm'\)"):
        task_of(load_config(path))


def test_prime_tasks_entry_point_group(user_module, monkeypatch):
    published = [EntryPoint(name="published-task", value="my_pkg.tasks:spec", group=registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(registry, "entry_points", lambda group: published if group == registry.ENTRY_POINT_GROUP else [])
    assert "published-task" in available_tasks()
    assert get_task_spec("published-task").name == "my-task"


def test_register_task_in_process():
    spec = get_task_spec("digits")
    import dataclasses

    renamed: TaskSpec = dataclasses.replace(spec, name="digits-again")
    register_task(renamed)
    try:
        assert get_task_spec("digits-again") is renamed
    finally:
        registry._registered.pop("digits-again")
