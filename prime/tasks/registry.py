"""Finding a task by the name a job config gives it.

Three ways, tried in this order: a built-in name (``digits``, ``stdlib-lm``,
``hf-causal-lm-lora``); an entry point ``module:attribute`` naming a ``TaskSpec`` (a user's
own task, importable on every participant); a name published by an installed package under the ``prime.tasks``
packaging entry-point group. Unknown names list what is available; an entry point that
fails to import names itself and the import error.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from pydantic import ValidationError

from prime.core.errors import ConfigError, TaskError
from prime.tasks.spec import Task, TaskSpec

ENTRY_POINT_GROUP = "prime.tasks"

#: Built-in task name → the module whose ``spec`` attribute defines it (imported on first use).
BUILTIN: dict[str, str] = {
    "digits": "prime.tasks.digits",
    "stdlib-lm": "prime.tasks.stdlib_lm",
    "hf-causal-lm-lora": "prime.tasks.hf_lora",
}

_registered: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Make ``spec`` available by its name in this process (tests, notebooks, plugins)."""
    _registered[spec.name] = spec
    return spec


def available_tasks() -> list[str]:
    published = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted({*BUILTIN, *_registered, *published})


def _import_spec(target: str, what: str) -> TaskSpec:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any failure inside a user's module is theirs to see, whole
        raise TaskError(f"task {what}: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    try:
        spec = getattr(module, attr or "spec")
    except AttributeError:
        raise TaskError(f"task {what}: module {module_name!r} has no attribute {attr or 'spec'!r}") from None
    if not isinstance(spec, TaskSpec):
        raise TaskError(f"task {what}: {target} is a {type(spec).__name__}, not a prime.tasks.TaskSpec")
    return spec


def get_task_spec(name: str) -> TaskSpec:
    """The spec a job's ``task.name`` means; ``TaskError`` says why not."""
    if name in _registered:
        return _registered[name]
    if name in BUILTIN:
        return _import_spec(BUILTIN[name], repr(name))
    if ":" in name:
        return _import_spec(name, f"entry point {name!r}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return _import_spec(ep.value, f"{name!r} (entry point {ep.value!r} of {ENTRY_POINT_GROUP})")
    raise TaskError(f"unknown task {name!r}; available: {', '.join(available_tasks())} "
                    f"(or name your own as 'package.module:attribute')")


def resolve_task(name: str, options: dict, source: str = "<config>") -> Task:
    """The named task bound to ``options`` validated by its own options model.

    Errors name the key and the file: ``job.toml: key 'task.options.preset': …``."""
    spec = get_task_spec(name)
    try:
        return spec.bind(spec.options.model_validate(options))
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(["task", "options", *(str(p) for p in err["loc"])])
            if err["type"] == "extra_forbidden":
                lines.append(f"{source}: unknown key '{key}' (task {spec.name!r})")
            else:
                lines.append(f"{source}: key '{key}': {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("invalid task options\n  " + "\n  ".join(lines)) from None
