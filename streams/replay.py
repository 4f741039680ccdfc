"""Replay interaction history into Kafka for backfill: MovieLens-100K or any JSONL/CSV log.

Events go out in event-time order through one idempotent producer keyed by user_id, so each
user's events stay in order in their partition. With ``backfill``, an end marker is sent to
every interactions partition afterwards; the worker then emits one list per user whose lists
were held back because their events were older than the freshness window.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

import schemas
from streams.kafka.client import InteractionProducer, ItemProducer


@dataclass(frozen=True)
class ColumnMapping:
    """Source column -> event field; ``time_format`` 'epoch' reads seconds since 1970."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    type: str = "type"
    value: str | None = "value"
    event_time: str = "event_time"
    time_format: str = "rfc3339"
    default_type: str = "view"
    extra: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str | None) -> "ColumnMapping":
        """'user_id=uid,item_id=movie,event_time=ts,time_format=epoch'."""
        if not spec:
            return cls()
        pairs = dict(part.split("=", 1) for part in spec.split(",") if part)
        return cls(**pairs)

    def apply(self, row: dict) -> dict:
        raw_time = row.get(self.event_time)
        if self.time_format == "epoch":
            from models.data.movielens import rfc3339

            event_time = rfc3339(float(raw_time))
        else:
            event_time = str(raw_time)
        event = {"user_id": str(row.get(self.user_id, "")), "item_id": str(row.get(self.item_id, "")),
                 "type": str(row.get(self.type) or self.default_type), "event_time": event_time}
        if self.value and row.get(self.value) not in (None, ""):
            event["value"] = float(row[self.value])
        return event


def read_log(path: Path, mapping: ColumnMapping) -> list[dict]:
    """Rows of a .jsonl or .csv/.tsv file mapped to interaction events (not yet validated)."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as f:
        if path.suffix in (".jsonl", ".json", ".ndjson"):
            rows = [json.loads(line) for line in f if line.strip()]
        else:
            rows = list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    return [mapping.apply(r) for r in rows]


def window(events: Iterable[dict], since: str | None, until: str | None) -> list[dict]:
    """Events in [since, until), sorted by event time; the sort is stable so ties keep log order."""
    lo = schemas.parse_time(since) if since else None
    hi = schemas.parse_time(until) if until else None
    keyed = [(schemas.parse_time(e["event_time"]), e) for e in events]
    kept = [(t, e) for t, e in keyed if (lo is None or t >= lo) and (hi is None or t < hi)]
    kept.sort(key=lambda te: te[0])
    return [e for _, e in kept]


@dataclass
class ReplayReport:
    sent: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    markers: int = 0
    seconds: float = 0.0


def replay(bootstrap: str, topic: str, events: list[dict], *, rate: float | None = None, backfill: bool = True,
           progress: bool = True, limit_users: int | None = None, config: dict | None = None) -> ReplayReport:
    """``config``: extra librdkafka keys (the connection's security, ``security_config``)."""
    report = ReplayReport()
    producer = InteractionProducer(bootstrap, topic, **(config or {}))
    start = time.monotonic()
    for n, event in enumerate(tqdm(events, disable=not progress, unit="ev", desc="replay"), 1):
        try:
            producer.send(event)
        except schemas.InvalidEvent as exc:
            report.rejected.append((n, str(exc)))
            continue
        report.sent += 1
        if rate:
            ahead = report.sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush()
    if backfill:
        report.markers = send_backfill_end(producer)
    report.seconds = time.monotonic() - start
    return report


def send_backfill_end(producer: InteractionProducer) -> int:
    """One control message per partition, after the data, so it is read after that partition's events."""
    count = producer.partitions()
    for partition in range(count):
        producer.send_raw(None, b"", headers={schemas.CONTROL_HEADER: schemas.BACKFILL_END}, partition=partition)
    producer.flush()
    return count


def movielens_events(users: int | None = None, first_per_user: int | None = None, dataset: str = "ml-100k") -> list[dict]:
    """Interactions of the first ``users`` user ids by first appearance (all when None), in time
    order; with ``first_per_user``, only each user's earliest that many."""
    from models.data import movielens

    events = movielens.interactions(dataset)
    if users is not None:
        keep: dict[str, None] = {}
        for e in events:
            if len(keep) >= users:
                break
            keep.setdefault(e["user_id"])
        events = [e for e in events if e["user_id"] in keep]
    if first_per_user is not None:
        counts: dict[str, int] = {}
        kept = []
        for e in events:
            counts[e["user_id"]] = counts.get(e["user_id"], 0) + 1
            if counts[e["user_id"]] <= first_per_user:
                kept.append(e)
        events = kept
    return events


def publish_movielens_items(bootstrap: str, topic: str, progress: bool = True, config: dict | None = None,
                            *, dataset: str = "ml-100k") -> int:
    from models.data import movielens

    with ItemProducer(bootstrap, topic, **(config or {})) as producer:
        for item in tqdm(list(movielens.items(dataset)), disable=not progress, unit="item", desc="items"):
            producer.send(item)
    return producer.delivered


def now_rfc3339() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")
