"""What the stages share about events on the wire: acceptance, dead-letter records, triggers, partitions."""
from __future__ import annotations

import base64
import time
import weakref
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone

import numpy as np
from faust.streams import _current_event

import schemas


@dataclass(frozen=True)
class Trigger:
    """What caused a recommendation list: carried on the output for tracing and latency, and kept
    in user state while the list is owed (so it survives a crash)."""

    topic: str
    partition: int
    offset: int
    event_time: str | None
    kind: str  # interaction | summary | backfill-end
    broker_timestamp: float | None  # seconds; the message's CreateTime/LogAppendTime

    def to_dict(self) -> dict:
        """The trigger as published on a list."""
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset,
                "event_time": self.event_time, "kind": self.kind}

    def to_state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, data: dict) -> "Trigger":
        """Fields this version does not know (written by a newer one) are left out, not an error."""
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def utcnow() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def is_recent(event_ts: float, window_seconds: float) -> bool:
    """Within the freshness window by event time (epoch seconds): older events are backfill and emit no list."""
    return time.time() - event_ts <= window_seconds


def encode_vector(vec: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vec, dtype=np.float32).tobytes()).decode()


def decode_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.float32)


def key_text(key) -> str:
    return key.decode() if isinstance(key, bytes) else str(key)


def header(message, name: str) -> bytes | None:
    headers = message.headers or {}
    items = headers.items() if isinstance(headers, dict) else headers
    for key, value in items:
        if key == name:
            return value
    return None


def accept(message, kind: str, key_field: str) -> dict:
    """Parse and validate; an event without the key its topic is partitioned by is rejected."""
    event = schemas.parse(kind, message.value)
    if message.key is None:
        raise schemas.InvalidEvent("NoKey", f"{kind} has no message key; key it by {key_field}")
    key = message.key.decode("utf-8", errors="replace")
    if key != event[key_field]:
        raise schemas.InvalidEvent("KeyMismatch", f"message key {key!r} differs from {key_field} {event[key_field]!r}")
    return event


def dead_letter_record(message, error_class: str, error_message: str) -> dict:
    value, key = message.value, message.key
    return {
        "original": None if value is None else base64.b64encode(value).decode(),
        "original_key": None if key is None else base64.b64encode(key).decode(),
        "original_size": 0 if value is None else len(value),
        "truncated": False,
        "source": {"topic": message.topic, "partition": message.partition, "offset": message.offset},
        "error": {"class": error_class, "message": error_message},
        "rejected_at": utcnow(),
    }


def in_partition_of(event) -> None:
    """Make the next table reads and writes use ``event``'s partition (RocksDB store, changelog).

    Faust takes that partition from its current-event context variable, for reads of a
    partitioned table too (a read under another partition's event finds nothing); in a batch the
    variable must name each access's own event. Only the variable is set, in the calling task:
    assigning ``stream.current_event`` instead races with take_events' buffer filler, which reads
    that attribute after an await, so one event was buffered twice and the next one lost.
    """
    _current_event.set(weakref.ref(event))


def in_no_partition() -> None:
    """Table reads look in every partition this worker holds (a key whose partition is unknown).

    A task that set a partition (``in_partition_of``) keeps it for later reads, and a read of a
    partitioned table under another partition's event finds nothing: clear it first.
    """
    _current_event.set(None)


class PartitionContext:
    """Stands for "an event of this topic partition" where no event is at hand (the emitter
    clearing an owed list): Faust's tables read only ``message.topic`` and ``message.partition``
    of the current event to pick the RocksDB store and the changelog partition."""

    def __init__(self, topic: str, partition: int):
        self.topic, self.partition = topic, partition
        self.message = self


_contexts: dict[tuple[str, int], PartitionContext] = {}


def in_partition(topic: str, partition: int) -> None:
    """``in_partition_of`` for a partition rather than an event (contexts are kept alive here)."""
    context = _contexts.setdefault((topic, partition), PartitionContext(topic, partition))
    in_partition_of(context)
