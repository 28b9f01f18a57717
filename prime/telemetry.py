"""Node metrics: counters every long-running node publishes to ``DATA_DIR/metrics.json``.

Operators (and the integration tests) read one small JSON file per node to see
what was accepted, what was dropped and why, and how much memory the process
holds, without attaching to the process. Rewritten atomically every ``interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prime.atomic import write_atomic

METRICS_FILE = "metrics.json"
log = logging.getLogger(__name__)


def plain(obj: Any) -> Any:
    """Counters, dataclasses and dicts as JSON-ready values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.name.startswith("_")}
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize()
    except (OSError, IndexError, ValueError):
        return peak_rss_bytes()


class MetricsFile:
    """Background task writing ``collect()`` plus process stats to a JSON file."""

    def __init__(self, path: Path, collect: Callable[[], dict[str, Any]], interval: float = 1.0) -> None:
        self.path = path
        self.collect = collect
        self.interval = interval
        self._task: asyncio.Task | None = None

    def snapshot(self) -> bytes:
        """Collect now (on the caller's thread: collectors may touch loop-bound objects)."""
        data = {**plain(self.collect()), "rss_bytes": current_rss_bytes(), "peak_rss_bytes": peak_rss_bytes(),
                "written_at": time.time()}
        return json.dumps(data, indent=1, sort_keys=True).encode()

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(write_atomic, self.path, self.snapshot())
            except OSError as exc:
                log.warning("cannot write %s: %s", self.path, exc)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"metrics:{self.path}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(OSError):
            write_atomic(self.path, self.snapshot())


def read_metrics(data_dir: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(data_dir) / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
