"""What is trained: task specs (model, data, loss, metrics, FSDP2 units, options) by name.

``task_of(config)`` is how every part of prime gets the job's task: the coordinator, the
trainers, the demo and the benchmarks all build from it.
"""

from __future__ import annotations

from prime.core.config import JobConfig
from prime.tasks.registry import available_tasks, get_task_spec, register_task, resolve_task
from prime.tasks.spec import DataSource, Shard, Task, TaskOptions, TaskSpec


def task_of(config: JobConfig) -> Task:
    """The job's task bound to its validated options (errors name the key and the config file)."""
    return resolve_task(config.task.name, config.task.options, config.source)


__all__ = ["DataSource", "Shard", "Task", "TaskOptions", "TaskSpec", "available_tasks", "get_task_spec", "register_task",
           "resolve_task", "task_of"]
