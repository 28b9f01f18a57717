"""Progress for long work: a ``rich`` bar on stderr when it is a terminal, log lines otherwise.

stdout stays the command's result (tables, JSON); bars are transient and go to stderr, so
piped or ``--json`` output is unchanged. Transfers a node makes in the background (a large
model fetch) report through the log instead: a node's stderr is usually a log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

log = logging.getLogger(__name__)

#: A model fetch at least this large logs its progress.
FETCH_PROGRESS_MIN_BYTES = 64 << 20
#: Seconds between progress lines of a long transfer.
FETCH_PROGRESS_EVERY_S = 5.0


def bar(description: str, total: int, *, enabled: bool = True) -> Progress:
    """A transient stderr bar (``with bar(...) as p: p.advance(p.task_ids[0])``); inert off a terminal."""
    console = Console(stderr=True)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True, disable=not (enabled and console.is_terminal))
    progress.add_task(description, total=total)
    return progress


@contextlib.contextmanager
def steps(description: str, total: int, *, enabled: bool = True) -> Iterator[Callable[[], None]]:
    """``with steps("writing", 3) as advance: ...; advance()``: a bar over ``total`` steps."""
    with bar(description, total, enabled=enabled) as progress:
        task = progress.task_ids[0]
        yield lambda: progress.advance(task)


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


@contextlib.asynccontextmanager
async def transfer_progress(what: str, size: int, received: Callable[[], int],
                            every: float = FETCH_PROGRESS_EVERY_S):
    """Log ``what``'s progress every ``every`` seconds while the block runs, if ``size`` is large.

    ``received()`` is a running byte count; its growth since entry is this transfer's progress."""
    if size < FETCH_PROGRESS_MIN_BYTES:
        yield
        return
    start, began = received(), time.monotonic()

    async def report() -> None:
        while True:
            await asyncio.sleep(every)
            done = min(size, received() - start)
            rate = done / max(1e-9, time.monotonic() - began)
            log.info("%s: %s of %s (%.0f%%), %s/s", what, _mib(done), _mib(size), 100 * done / size, _mib(rate))

    log.info("%s: %s", what, _mib(size))
    task = asyncio.create_task(report())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    log.info("%s: done in %.1fs", what, time.monotonic() - began)
