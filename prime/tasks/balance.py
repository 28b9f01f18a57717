"""Whole items (modules, documents) into shards balanced by size: what every text task's split uses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from prime.core.errors import TaskError

T = TypeVar("T")


def balanced_shards(items: Sequence[T], count: int, *, size: Callable[[T], int], name: Callable[[T], str],
                    what: str) -> list[list[T]]:
    """Greedy, largest item first into the currently smallest shard (ties: lower shard index; items
    of equal size by name). Deterministic; each shard's items sorted by name. ``what`` names the
    items in errors (``"modules"``)."""
    if count < 1:
        raise TaskError(f"shard count must be at least 1, got {count}")
    if len(items) < count:
        raise TaskError(f"cannot cut {len(items)} {what} into {count} shards: every shard needs at least one; "
                        f"use at most {len(items)} shards or more data")
    shards: list[list[T]] = [[] for _ in range(count)]
    sizes = [0] * count
    for item in sorted(items, key=lambda it: (-size(it), name(it))):
        i = min(range(count), key=lambda j: (sizes[j], j))
        shards[i].append(item)
        sizes[i] += size(item)
    return [sorted(s, key=name) for s in shards]
