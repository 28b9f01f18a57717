"""Leadership: which coordinator of a job leads, in which term, and whether its standby keeps up.

All coordinators of a job share one key; a *term* tells their announcements apart. A
(re)started coordinator leads unless the bus shows a term newer than any it led; a
standby that takes over leads the next term; a leader that sees a newer term steps down
(``superseded``). Trainers follow the highest term and the intake refuses updates of any
other, so two coordinators never commit the same round. The term this node led last is
kept in a local file: it says who *this* node was, so it is not replicated.

While leading, the standby's acknowledgements (``StandbyStatus``) say how far it has
mirrored; after each commit the leader waits briefly for the standby to hold it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from prime.atomic import write_atomic
from prime.bus.liveness import LivenessTracker
from prime.core.records import RoundAnnouncement, RoundCommitted, StandbyStatus

log = logging.getLogger(__name__)

#: Local file: the highest term this coordinator has led.
LED_TERM_FILE = "led_term"


class Leadership:
    def __init__(self, data_dir: Path, public_key: bytes, address: str, heartbeat_interval: float) -> None:
        self.public_key = public_key
        self.address = address  # our blob/DHT address: how two leaders of one term tell themselves apart
        self.heartbeat_interval = heartbeat_interval
        self.role = "starting"
        self.term = 0  # the term this node leads (0: none yet)
        self.highest_term = 0  # the highest term seen on the bus
        self._led_term_file = data_dir / LED_TERM_FILE
        self.led_term = int(self._led_term_file.read_text()) if self._led_term_file.exists() else 0
        self.superseded = asyncio.Event()
        self._standby_seen = 0.0
        self._standby_mirrored = 0
        self._standby_acked = asyncio.Event()

    async def may_lead(self, liveness: LivenessTracker) -> bool:
        """A (re)started coordinator leads unless the bus shows a newer term than it ever led."""
        await asyncio.sleep(max(1.0, 2 * self.heartbeat_interval))  # retained records arrive
        if liveness.is_alive(self.public_key):  # we have not started ours: another process leads
            log.warning("another coordinator with this key is alive: standing by")
            return False
        if self.highest_term > self.led_term:
            log.warning("term %d is led by another coordinator (this one led term %d): standing by",
                        self.highest_term, self.led_term)
            return False
        return True

    def begin_term(self, term: int | None) -> int:
        """Lead ``term`` (a takeover's), or resume the one this node led last; return it."""
        self.term = term or max(self.led_term, 1)
        if self.term != self.led_term:
            write_atomic(self._led_term_file, str(self.term).encode())
            self.led_term = self.term
        self.highest_term = max(self.highest_term, self.term)
        self.role, self.superseded = "primary", asyncio.Event()
        return self.term

    def stand_by(self) -> None:
        self.role = "standby"

    def observe(self, record: RoundAnnouncement | RoundCommitted | StandbyStatus) -> None:
        """A verified record signed with the job's key: ours, a standby's, or another term's."""
        if isinstance(record, StandbyStatus):
            if self.role == "primary":
                self._standby_seen = time.monotonic()
                self._standby_mirrored = max(self._standby_mirrored, record.mirrored_round)
                self._standby_acked.set()
            return
        self.highest_term = max(self.highest_term, record.term)
        if self.role != "primary":
            return
        if record.term > self.term:
            self.superseded.set()
        elif record.term == self.term and record.providers[:1] != [self.address]:
            # Two leaders in one term must not happen; if it does, exactly one steps down.
            theirs = record.providers[0] if record.providers else ""
            log.error("another coordinator (%s) also leads term %d", theirs, self.term)
            if self.address > theirs:
                self.superseded.set()

    async def await_standby(self, round_number: int) -> None:
        """If a standby is alive, wait (briefly) until it holds this commit before moving on."""
        window = 3 * self.heartbeat_interval
        deadline = time.monotonic() + window
        while time.monotonic() - self._standby_seen < window and self._standby_mirrored < round_number:
            if (remaining := deadline - time.monotonic()) <= 0:
                log.warning("round %d: standby has not acked the checkpoint; continuing", round_number)
                return
            self._standby_acked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._standby_acked.wait(), remaining)

    def expect_ack(self) -> None:
        """A commit notice is about to go out: only an ack after it counts for it."""
        self._standby_acked.clear()
