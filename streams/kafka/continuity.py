"""Every offset of an input partition reaches its stage once, in order, whatever the group does.

Why this exists: the consumer group's committed offset is not a safe record of what a stage
applied. Measured on this project (two workers joining on a backlog, ``bench/scale_out.py``):
the new owner of an item-pairs partition that had no committed offset began reading at the
partition's end (offset 34 and 36 in two runs, with ``auto.offset.reset=earliest``), and Faust,
which then sees no gap before its first acknowledged offset, committed past records nobody
had read: 8% of the co-occurrence increments were lost without a trace. Faust's producer-buffer
flush before a commit also returns after 0.1 s without a send, so an offset can be committed
before the changelog writes of its events (a crash then loses them). Neither can be fixed from
outside Faust, so this guard makes both harmless:

- each stage records, per source partition, the last offset it took (``checkpoint_key``) in its
  own table, in the changelog partition its state for that source partition is written to,
  after that state, so a checkpoint never runs ahead of the state it vouches for;
- on the first event of a partition after an assignment the guard reads that checkpoint (else
  the group's committed offset, else the log start) and from then on knows the next offset due;
- an event past the next offset due makes the guard read the missing offsets from the broker
  itself (``PartitionReader``) and hand them to the stage first, in order; a gap the broker
  confirms (compaction, transaction markers, retention) is passed over;
- an event at or below the checkpoint was applied before, and is dropped here (redelivery);
- a partition with no event since its assignment is checked on a timer (``catch_up``): a
  committed offset past its checkpoint means records nobody applied, read and applied at once
  rather than when the partition's next event happens to arrive. Without a committed offset
  the consumer may begin at the log's end (above), so once the log's end has stood still for a
  tick with no event delivered, everything from the checkpoint (else the log start) to that end
  is read. Found by a three-worker kill -9 test that failed in CI:
  the killed worker had applied part of a partition and committed nothing, the replay had ended,
  and the new owner, reading from the end, would have waited for an event that never came.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable, MutableMapping, Protocol

from confluent_kafka import KafkaError, KafkaException

from streams.events import in_partition, in_partition_of

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "\x00offset/"  # ids cannot contain NUL (the event schemas forbid it)
READ_TIMEOUT_S = 30.0
# broker answers worth asking again, whether or not librdkafka flags them retriable: a group
# coordinator moving or loading (after a broker restart), a connection not yet back
TRANSIENT_CODES = frozenset({KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                             KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._TRANSPORT, KafkaError._TIMED_OUT,
                             KafkaError._ALL_BROKERS_DOWN})
CATCH_UP_CHUNK = 5000  # records a catch-up reads and applies at a time (one batch of the stage each)
# checks (1 s apart, the lock free at each) without an event from a partition between two
# sightings of its log past the next offset due, before its records are read here: a consumer
# that stopped delivering it (more for a stage that batches for over two seconds: ``holds_for``)
STALLED_CHECKS = 3


def checkpoint_key(topic: str, partition: int) -> str:
    return f"{CHECKPOINT_PREFIX}{topic}/{partition}"


def is_checkpoint_key(key) -> bool:
    return isinstance(key, str) and key.startswith(CHECKPOINT_PREFIX)


@dataclass
class ReadMessage:
    """A record the guard read itself, with the fields of Faust's message the stages use."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list
    timestamp: float  # seconds, as Faust gives them


class ReadEvent:
    """Stands for a Faust event around a ``ReadMessage`` (``in_partition_of`` keeps a weak reference)."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, message: ReadMessage):
        self.message = message


class Reader(Protocol):
    def read(self, partition: int, start: int, end: int) -> list[ReadMessage]:
        """The records of ``partition`` with offsets in [start, end), oldest first."""

    def committed(self, partition: int) -> int | None:
        """The consumer group's committed offset of ``partition`` (None: none)."""

    def end(self, partition: int) -> int:
        """The offset after the last record of ``partition`` (its high watermark)."""


class PartitionReader:
    """Reads one topic's partitions outside the consumer group (assign, never subscribe), and
    the group's committed offsets; blocking: call it in a thread."""

    def __init__(self, topic: str, group_id: str, client_config: dict):
        self.topic, self.group_id, self.config = topic, group_id, client_config
        self._consumer = None

    def _client(self):
        if self._consumer is None:
            from confluent_kafka import Consumer

            self._consumer = Consumer({
                **self.config, "group.id": self.group_id, "enable.auto.commit": False,
                "auto.offset.reset": "earliest", "enable.partition.eof": True, "log_level": 0,
            })
        return self._consumer

    def read(self, partition: int, start: int, end: int) -> list[ReadMessage]:
        from confluent_kafka import TopicPartition

        consumer = self._client()
        consumer.assign([TopicPartition(self.topic, partition, start)])
        found: list[ReadMessage] = []
        deadline = time.monotonic() + READ_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                records = consumer.consume(num_messages=1000, timeout=1.0)
                if records:
                    deadline = time.monotonic() + READ_TIMEOUT_S  # a long gap reads as long as it progresses
                for record in records:
                    error = record.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            return found
                        raise KafkaException(error)
                    if record.offset() >= end:
                        return found
                    if record.offset() >= start:
                        found.append(ReadMessage(self.topic, partition, record.offset(), record.key(), record.value(),
                                                 list(record.headers() or []), record.timestamp()[1] / 1000.0))
                if found and found[-1].offset == end - 1:
                    return found
            raise TimeoutError(f"reading {self.topic}/{partition} [{start}, {end}): no record for {READ_TIMEOUT_S:.0f}s")
        finally:
            consumer.unassign()

    def committed(self, partition: int) -> int | None:
        from confluent_kafka import TopicPartition

        [tp] = self._retrying(lambda: self._client().committed([TopicPartition(self.topic, partition)],
                                                               timeout=READ_TIMEOUT_S))
        return tp.offset if tp.offset >= 0 else None

    def end(self, partition: int) -> int:
        from confluent_kafka import TopicPartition

        return self._retrying(lambda: self._client().get_watermark_offsets(TopicPartition(self.topic, partition),
                                                                           timeout=READ_TIMEOUT_S))[1]

    @staticmethod
    def _retrying(call):
        """``call()`` again while the broker answers with a retriable error (a coordinator moving
        or loading after a broker restart: NOT_COORDINATOR was seen in the broker-restart test),
        for up to READ_TIMEOUT_S; then the error is raised."""
        deadline = time.monotonic() + READ_TIMEOUT_S
        while True:
            try:
                return call()
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                transient = isinstance(error, KafkaError) and (error.retriable() or error.code() in TRANSIENT_CODES)
                if time.monotonic() > deadline or not transient:
                    raise
                time.sleep(0.5)


class OffsetGuard:
    """One input topic of one stage: ``admit`` a batch before the stage, ``taken`` after it."""

    def __init__(self, topic: str, table: MutableMapping, reader: Reader,
                 off_loop: Callable[..., Awaitable], metrics=None,
                 assigned: Callable[[], set[int] | None] = lambda: None,
                 acknowledge: Callable[[ReadMessage], None] = lambda message: None,
                 diagnose: Callable[[int], dict] = lambda partition: {}, holds_for: float = 0.0):
        self.topic, self.table, self.reader, self.off_loop = topic, table, reader, off_loop
        self.metrics, self.assigned, self.acknowledge, self.diagnose = metrics, assigned, acknowledge, diagnose
        # the stream may hold a delivered record this long before the stage sees it: the stage's batch
        # window, which its take reads from here so that the two cannot drift apart
        self.holds_for = holds_for
        self.stalled_checks = max(STALLED_CHECKS, math.ceil(holds_for) + 1)
        self.next_offset: dict[int, int] = {}  # partition -> the next offset due to the stage
        self.lock = asyncio.Lock()  # the stream's batches and the idle check take turns
        self.generation = 0  # counts resets: a check begun before a rebalance must not outlive it
        self.idle_ends: dict[int, int] = {}  # partition -> its log end at the last check (no committed offset)
        self.unmoved: dict[int, tuple[int, int]] = {}  # partition -> (next offset, checks it has not moved)
        self.seen_past: dict[int, int] = {}  # partition -> next offset due when its log was last seen past it

    async def feed(self, process: Callable[[list], Awaitable], events) -> None:
        """One batch from the stream through ``admit``, the stage and ``taken``."""
        async with self.lock:
            admitted = await self.admit(events)
            if admitted:
                await process(admitted)
                self.taken(admitted)

    async def catch_up(self, process: Callable[[list], Awaitable]) -> None:
        """Partitions without an event since their assignment: records between the checkpoint
        and the group's committed offset were committed by a consumer that never applied them
        (or whose changelog writes were lost); without a committed offset, the records from the
        checkpoint (else the log start) to the log's end may never be delivered (the consumer can
        begin at the end). Either way they are read and applied now, in chunks; any the stream
        delivers as well are dropped as taken. Without a committed offset this waits until the
        log's end is the same at two checks: a partition still being written to, or whose
        consumer began at its start, gets its first event delivered meanwhile (reading it here
        too was measured: the item-pairs partitions of every ingest run, read twice). Skipped
        while a batch is being applied (the timer would wait behind it): the next tick checks."""
        if self.lock.locked():
            return
        async with self.lock:
            generation, assigned = self.generation, self.assigned()
            for partition in sorted((assigned or set()) - self.next_offset.keys()):
                in_partition(self.topic, partition)
                due = self._checkpoint_due(partition)
                try:
                    committed = await self.off_loop(self.reader.committed, partition)
                    end = await self.off_loop(self.reader.end, partition) if committed is None else None
                except (KafkaException, TimeoutError) as exc:  # unreachable or recovering: this one at the next
                    self._unreachable(partition, "the catch-up check", exc)  # tick; the others are still checked
                    continue
                if committed is None:
                    start = due or 0
                    if self.idle_ends.get(partition) != end:  # new records meanwhile, or the first check
                        self.idle_ends[partition] = end
                        continue
                elif due is None:
                    # nothing applied here yet: the consumer begins at the group's offset, the offset
                    # ``_first_due`` would find at the first event; kept, so the broker is asked once
                    # per assignment, not at every tick until that event
                    if generation == self.generation:
                        self.next_offset[partition] = committed
                    continue
                else:
                    start, end = due, committed
                if generation != self.generation:  # revoked meanwhile
                    return
                if not await self._apply_range(process, partition, start, end, generation):
                    return
            await self._catch_up_stalled(process, generation, assigned)

    async def _catch_up_stalled(self, process: Callable[[list], Awaitable], generation: int, assigned) -> None:
        """Partitions the stream stopped delivering: the log was seen past the next offset due, and
        ``stalled_checks`` checks later no event has come and the offset is still due. Seen in a
        kill -9 test after a restart: the restarted worker caught two partitions up to the
        committed offsets, and Faust never delivered their records after it, so those users'
        interactions waited forever. Whatever keeps a consumer from delivering, the records are
        read here and applied; any the stream delivers later are dropped as taken.

        Two sightings, not one: a partition idle for a while whose next record is written just
        before a check has not stalled, it is on its way (measured: flagged 9 ms and 119 ms after
        the records were written, the stream's batch still filling). A partition that is caught
        up costs one log-end query every ``stalled_checks`` checks."""
        for partition in sorted((assigned or set()) & self.next_offset.keys()):
            due = self.next_offset[partition]
            was, checks = self.unmoved.get(partition, (None, 0))
            checks = checks + 1 if was == due else 0
            self.unmoved[partition] = (due, checks)
            if checks < self.stalled_checks:
                continue
            try:
                end = await self.off_loop(self.reader.end, partition)
            except (KafkaException, TimeoutError) as exc:
                self._unreachable(partition, "the stalled-partition check", exc)
                return
            self.unmoved[partition] = (due, 0)
            if generation != self.generation or self.next_offset.get(partition) != due or end <= due:
                continue
            if self.seen_past.get(partition) != due:  # the record at ``due`` may have just been written
                self.seen_past[partition] = due
                continue
            log.warning("%s/%d: no record delivered from offset %d in %d checks since the log was seen past it "
                        "(it reaches %d); reading them from the broker; the consumer's state of it: %s", self.topic,
                        partition, due, self.stalled_checks, end, self._diagnosis(partition))
            self._count("stalled_catch_ups_total")
            if not await self._apply_range(process, partition, due, end, generation):
                return

    async def _apply_range(self, process: Callable[[list], Awaitable], partition: int, start: int, end: int,
                           generation: int) -> bool:
        """The records of [start, end) read from the broker and applied in chunks, the partition's
        next offset moved past each chunk as it is taken (at least to ``start``). False when a
        rebalance or the broker stopped it: the next tick or the stream's next event goes on."""
        self.next_offset[partition] = max(start, self.next_offset.get(partition, start))
        for chunk in range(start, end, CATCH_UP_CHUNK):
            in_partition(self.topic, partition)  # ``process`` may have set another partition
            chunk_end = min(chunk + CATCH_UP_CHUNK, end)
            try:
                missing = await self._read(partition, chunk, chunk_end)
            except (KafkaException, TimeoutError) as exc:
                self._unreachable(partition, f"reading [{chunk}, {chunk_end})", exc)
                return False
            if generation != self.generation:
                return False
            if missing:
                await process(missing)
                self.taken(missing)
            self.next_offset[partition] = max(self.next_offset[partition], chunk_end)
        return True

    def _diagnosis(self, partition: int) -> dict:
        """The consumer's state of the partition, for a warning that must be logged whatever it reads."""
        try:
            return self.diagnose(partition)
        except Exception as exc:  # the report reads Faust's and aiokafka's internals
            return {"unreadable": f"{type(exc).__name__}: {exc}"}

    def _unreachable(self, partition: int, what: str, exc: Exception) -> None:
        """A catch-up step the broker could not answer: logged and counted, left to the next tick."""
        log.warning("%s/%d: %s could not reach the broker (%s: %s); next tick", self.topic, partition, what,
                    type(exc).__name__, exc)
        self._count("catch_up_errors_total")

    def reset(self) -> None:
        """After a revocation: another worker may move any partition on; read checkpoints again."""
        self.next_offset.clear()
        self.idle_ends.clear()
        self.unmoved.clear()
        self.seen_past.clear()
        self.generation += 1

    async def admit(self, events: Iterable) -> list:
        """The batch as the stage must see it: missing offsets read and put first, redelivered
        and foreign (revoked) ones dropped."""
        assigned = self.assigned()
        admitted: list = []
        for event in events:
            message = event.message
            partition, offset = message.partition, message.offset
            if assigned is not None and partition not in assigned:
                self._count("offsets_dropped_total", reason="not assigned")
                continue
            due = self.next_offset.get(partition)
            if due is None:
                due = await self._first_due(event)
            if offset < due:
                self._count("offsets_dropped_total", reason="already taken")
                continue
            if offset > due:
                admitted.extend(await self._read(partition, due, offset))
            admitted.append(event)
            self.next_offset[partition] = offset + 1
        return admitted

    def taken(self, events: list) -> None:
        """After the stage applied ``events``: each partition's last offset recorded beside its
        state (same table, same changelog partition, written after it), and the records this
        guard read acknowledged to the consumer so its committed offset can move past them."""
        last: dict[int, object] = {}
        for event in events:
            last[event.message.partition] = event
            if isinstance(event, ReadEvent):
                self.acknowledge(event.message)
        for partition, event in last.items():
            in_partition_of(event)
            self.table[checkpoint_key(self.topic, partition)] = {"offset": event.message.offset}

    async def _read(self, partition: int, start: int, end: int) -> list[ReadEvent]:
        missing = await self.off_loop(self.reader.read, partition, start, end)
        if missing:
            log.warning("%s/%d: offsets %d..%d were never applied by any worker (%d records); read from the "
                        "broker and applied in order", self.topic, partition, start, end - 1, len(missing))
            self._count("offsets_recovered_total", len(missing))
        return [ReadEvent(m) for m in missing]

    async def _first_due(self, event) -> int:
        partition = event.message.partition
        in_partition_of(event)
        due = self._checkpoint_due(partition)
        if due is not None:
            return due
        committed = await self.off_loop(self.reader.committed, partition)
        return committed if committed is not None else 0

    def _checkpoint_due(self, partition: int) -> int | None:
        """The offset after the partition's checkpoint (None: none). The caller has set the
        partition context: a partitioned table reads the partition of the current event."""
        record = self.table.get(checkpoint_key(self.topic, partition))
        return None if record is None else int(record["offset"]) + 1

    def _count(self, name: str, n: int = 1, **labels) -> None:
        if self.metrics is not None:
            self.metrics.inc(name, n, topic=self.topic, **labels)


def faust_acknowledger(app) -> Callable[[ReadMessage], None]:
    """Acknowledge a record the guard read as if Faust had delivered it: Faust commits the
    highest offset below which every offset is acknowledged, so without this a partition whose
    gap the guard filled would never commit again."""
    from faust.types import TP, Message

    def acknowledge(read: ReadMessage) -> None:
        tp = TP(read.topic, read.partition)
        app.consumer.ack(Message(read.topic, read.partition, read.offset, read.timestamp, 0, read.headers,
                                 read.key, read.value, None, tp=tp))

    return acknowledge
