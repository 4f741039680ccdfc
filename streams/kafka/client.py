"""Typed confluent-kafka clients for services: produce events, consume recommendations.

Producers use the murmur2 partitioner, the Java client's and Faust's default, so an event keyed
by user_id lands in the partition that holds that user's state whichever client produced it.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Iterable, Iterator

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, Producer, TopicPartition

import schemas

PRODUCER_DEFAULTS = {
    "partitioner": "murmur2_random",
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "compression.type": "lz4",
    "message.max.bytes": 4 * 1024 * 1024,
}


class DeliveryError(RuntimeError):
    pass


READER_GROUP_PREFIX = "mmsr-reader-"


class TopicMissing(RuntimeError):
    pass


def topic_reader(bootstrap_servers: str, topic: str, from_beginning: bool = True, timeout: float = 10.0,
                 **config) -> Consumer:
    """A consumer of every partition of ``topic`` that joins no consumer group (assign, never
    subscribe); TopicMissing if the topic has no partitions within ``timeout``.

    A group would make each reader wait for the broker's first assignment
    (``group.initial.rebalance.delay.ms``, 3 s by default), leave a group behind on the broker,
    and split the partitions between two readers that share its name. The client requires a
    group id all the same: a fresh one, never joined, so nothing is committed under it.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": f"{READER_GROUP_PREFIX}{uuid.uuid4()}",
                         "auto.offset.reset": "earliest" if from_beginning else "latest",
                         "enable.auto.commit": False, **config})
    deadline = time.monotonic() + timeout
    try:
        while True:
            metadata = consumer.list_topics(topic, timeout=max(0.5, deadline - time.monotonic())).topics.get(topic)
            if metadata is not None and metadata.error is None and metadata.partitions:
                break
            if time.monotonic() >= deadline:
                raise TopicMissing(f"topic {topic!r} has no partitions on {bootstrap_servers}")
            time.sleep(0.2)
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, partition, start) for partition in sorted(metadata.partitions)])
    except BaseException:
        consumer.close()
        raise
    return consumer


class EventProducer:
    """Validates before sending and tracks delivery; ``flush`` raises if any delivery failed."""

    def __init__(self, bootstrap_servers: str, topic: str, kind: str, key_field: str, **config):
        self.topic, self.kind, self.key_field = topic, kind, key_field
        self._producer = Producer({"bootstrap.servers": bootstrap_servers, **PRODUCER_DEFAULTS, **config})
        self.delivered = 0
        self.failed: list[str] = []

    def _on_delivery(self, err, msg) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed.append(f"{msg.key()!r}: {err.str()}")

    def send(self, event: dict, *, validate: bool = True, headers: dict | None = None,
             timestamp_ms: int | None = None) -> None:
        if validate:
            schemas.validate(self.kind, event)
        self.send_raw(str(event[self.key_field]).encode(), json.dumps(event, separators=(",", ":")).encode(),
                      headers=headers, timestamp_ms=timestamp_ms)

    def send_raw(self, key: bytes | None, value: bytes | None, *, headers: dict | None = None,
                 partition: int | None = None, timestamp_ms: int | None = None) -> None:
        kwargs = {"on_delivery": self._on_delivery}
        if headers:
            kwargs["headers"] = list(headers.items())
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, **kwargs)
                break
            except BufferError:
                self._producer.poll(0.1)  # local queue full: let deliveries drain
        self._producer.poll(0)

    def partitions(self) -> int:
        return len(self._producer.list_topics(self.topic, timeout=10).topics[self.topic].partitions)

    def flush(self, timeout: float = 60.0) -> int:
        remaining = self._producer.flush(timeout)
        if remaining:
            self.failed.append(f"{remaining} messages still undelivered after {timeout:.0f}s")
        if self.failed:
            raise DeliveryError(f"{len(self.failed)} deliveries failed; first: {self.failed[0]}")
        return self.delivered

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.flush()


class InteractionProducer(EventProducer):
    def __init__(self, bootstrap_servers: str, topic: str = "interactions", **config):
        super().__init__(bootstrap_servers, topic, "interaction", "user_id", **config)

    def interaction(self, user_id: str, item_id: str, type: str, event_time: str, **extra) -> None:
        self.send({"user_id": user_id, "item_id": item_id, "type": type, "event_time": event_time, **extra})


class ItemProducer(EventProducer):
    def __init__(self, bootstrap_servers: str, topic: str = "items", **config):
        super().__init__(bootstrap_servers, topic, "item", "item_id", **config)


@dataclass(frozen=True)
class RecommendedItem:
    item_id: str
    score: float
    rank: int
    sources: tuple[str, ...] = ()  # the candidate sources that proposed the item

    @classmethod
    def from_event(cls, item: dict) -> "RecommendedItem":
        return cls(item["item_id"], item["score"], item["rank"], tuple(item.get("sources", ())))


@dataclass(frozen=True)
class Recommendation:
    user_id: str
    items: tuple[RecommendedItem, ...]
    summary_version: int
    model: str
    generated_at: str
    strategy: str | None
    latency_ms: float | None
    trigger: dict
    versions: dict | None = None  # the models the candidate stage used

    @classmethod
    def from_event(cls, event: dict) -> "Recommendation":
        """Fields this client does not know (newer producers) are ignored, not an error."""
        return cls(event["user_id"], tuple(RecommendedItem.from_event(i) for i in event["items"]),
                   event["summary_version"], event["model"], event["generated_at"], event.get("strategy"),
                   event.get("latency_ms"), event.get("trigger", {}), event.get("versions"))


class RecommendationConsumer:
    """Iterate recommendation lists. With a ``group_id``, as a member of that group, committing;
    without one, a tail: every partition, no group, nothing committed."""

    def __init__(self, bootstrap_servers: str, topic: str = "recommendations", group_id: str | None = None,
                 from_beginning: bool = True, **config):
        if group_id is None:
            self._consumer = topic_reader(bootstrap_servers, topic, from_beginning, **config)
            return
        self._consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group_id,
                                   "auto.offset.reset": "earliest" if from_beginning else "latest", **config})
        self._consumer.subscribe([topic])

    def poll(self, timeout: float = 1.0) -> Recommendation | None:
        msg = self._consumer.poll(timeout)
        if msg is None:
            return None
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                return None
            raise RuntimeError(msg.error().str())
        return Recommendation.from_event(schemas.parse("recommendation", msg.value()))

    def __iter__(self) -> Iterator[Recommendation]:
        while True:
            rec = self.poll()
            if rec is not None:
                yield rec

    def close(self) -> None:
        self._consumer.close()


def read_all(bootstrap_servers: str, topic: str, timeout: float = 10.0, idle: float = 2.0, **config) -> list:
    """Every message now in a topic (tests, tools): waits up to ``timeout`` for the first, then
    stops after ``idle`` seconds without one."""
    out, deadline, last = [], time.monotonic() + timeout, time.monotonic()
    try:
        consumer = topic_reader(bootstrap_servers, topic, timeout=timeout, **config)
    except TopicMissing:
        return out
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                if out and time.monotonic() - last > idle:
                    break
                continue
            if msg.error():
                continue
            out.append(msg)
            last = time.monotonic()
    finally:
        consumer.close()
    return out


def latest_by_user(bootstrap_servers: str, topic: str, timeout: float = 5.0, idle: float = 1.0) -> dict[str, dict]:
    """The newest recommendation event per user now in the topic."""
    lists: dict[str, dict] = {}
    for msg in read_all(bootstrap_servers, topic, timeout=timeout, idle=idle):
        event = json.loads(msg.value())
        lists[event["user_id"]] = event
    return lists


def jsonl_lines(lines: Iterable[str]) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line number, event or None, error or None) for each non-blank line."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            if not isinstance(event, dict):
                raise ValueError("not a JSON object")
            yield number, event, None
        except ValueError as exc:
            yield number, None, f"invalid JSON: {exc}"
