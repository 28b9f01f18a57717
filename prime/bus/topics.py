"""Topic names of one job on the control plane, in one place.

Every topic of a job lives under ``prime/<job_id>/``, so one broker can carry many
jobs and a wildcard never crosses from one job into another. Ids are validated
here because an id with ``+``, ``#`` or ``/`` in it would silently turn a topic
into a wildcard or move it to another level.
"""

from __future__ import annotations

from dataclasses import dataclass

ROOT = "prime"
_MAX_ID_BYTES = 128
_FORBIDDEN = frozenset("+#/\x00")


def validate_id(value: str, what: str = "job id") -> str:
    """Return ``value`` if it can be one topic level; raise ``ValueError`` saying why not."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    bad = sorted({c for c in value if c in _FORBIDDEN or not c.isprintable()})
    if bad:
        raise ValueError(
            f"{what} {value!r} contains {', '.join(map(repr, bad))}; "
            "MQTT reserves '+', '#' and '/' (use letters, digits, '-', '_' or '.')"
        )
    if len(value.encode()) > _MAX_ID_BYTES:
        raise ValueError(f"{what} {value[:20]!r}… is longer than {_MAX_ID_BYTES} bytes")
    return value


def validate_topic(topic: str, *, wildcard: bool = False) -> str:
    """Check a topic name (or, with ``wildcard``, a filter) against MQTT 3.1.1 rules."""
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"topic must be a non-empty string, got {topic!r}")
    if "\x00" in topic or len(topic.encode()) > 65535:
        raise ValueError(f"topic {topic[:40]!r} has a NUL character or is too long")
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if not wildcard and ("+" in level or "#" in level):
            raise ValueError(f"topic {topic!r} has a wildcard; wildcards are for subscribe only")
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"topic filter {topic!r}: '#' must be the whole last level")
        if "+" in level and level != "+":
            raise ValueError(f"topic filter {topic!r}: '+' must be a whole level")
    return topic


@dataclass(frozen=True)
class Topics:
    """Topic names for one job (validated at construction)."""

    job_id: str

    def __post_init__(self) -> None:
        validate_id(self.job_id, "job id")

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{self.job_id}"

    @property
    def announce(self) -> str:
        """Retained: the current round announcement, so a late joiner sees it at once."""
        return f"{self.prefix}/announce"

    @property
    def updates(self) -> str:
        """Update notices from trainers to the coordinator (not retained)."""
        return f"{self.prefix}/updates"

    @property
    def committed(self) -> str:
        """Retained: summary of the latest committed round."""
        return f"{self.prefix}/committed"

    @property
    def standby(self) -> str:
        """Standby coordinators' replication acks (not retained)."""
        return f"{self.prefix}/standby"

    @property
    def budget(self) -> str:
        """Budget events: a limit crossed its notification threshold, or stopped the job (not retained)."""
        return f"{self.prefix}/budget"

    def liveness(self, network_id: str) -> str:
        """One node's heartbeats and its Last Will."""
        return f"{self.prefix}/liveness/{validate_id(network_id, 'network id')}"

    @property
    def liveness_all(self) -> str:
        """Wildcard over every node's liveness topic."""
        return f"{self.prefix}/liveness/+"
