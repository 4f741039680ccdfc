"""The offset guard: no input offset skipped, none handed to a stage twice, whatever the consumer does."""
from __future__ import annotations

import asyncio

from streams.kafka.continuity import OffsetGuard, ReadEvent, ReadMessage, checkpoint_key, is_checkpoint_key
from streams.metrics import Metrics

TOPIC = "interactions"


class Event:
    def __init__(self, partition: int, offset: int):
        self.message = ReadMessage(TOPIC, partition, offset, b"k", f"v{offset}".encode(), [], 0.0)


class Broker:
    """What the broker holds per partition: a set of offsets (a gap in it is a real one)."""

    def __init__(self, offsets: dict[int, list[int]], committed: dict[int, int] | None = None):
        self.offsets, self._committed = offsets, committed or {}
        self.reads: list[tuple[int, int, int]] = []

    def read(self, partition, start, end):
        self.reads.append((partition, start, end))
        return [Event(partition, o).message for o in self.offsets[partition] if start <= o < end]

    def committed(self, partition):
        return self._committed.get(partition)

    def end(self, partition):
        return max(self.offsets[partition], default=-1) + 1


async def inline(fn, *args):
    return fn(*args)


def make_guard(broker, table=None, assigned=None, acknowledged=None, diagnose=lambda partition: {},
               holds_for: float = 0.0):
    metrics = Metrics()
    guard = OffsetGuard(TOPIC, {} if table is None else table, broker, inline, metrics,
                        assigned=lambda: assigned,
                        acknowledge=(acknowledged.append if acknowledged is not None else lambda m: None),
                        diagnose=diagnose, holds_for=holds_for)
    return guard, metrics


def offsets(events):
    return [(e.message.partition, e.message.offset) for e in events]


def admit(guard, events):
    return asyncio.run(guard.admit(events))


def test_offsets_never_delivered_are_read_and_put_first_in_order():
    broker = Broker({0: list(range(10))})
    acknowledged = []
    table = {checkpoint_key(TOPIC, 0): {"offset": 2}}
    guard, metrics = make_guard(broker, table, acknowledged=acknowledged)
    admitted = admit(guard, [Event(0, 6), Event(0, 7)])
    assert offsets(admitted) == [(0, 3), (0, 4), (0, 5), (0, 6), (0, 7)]
    assert [type(e) for e in admitted[:3]] == [ReadEvent] * 3
    assert broker.reads == [(0, 3, 6)]
    assert metrics.get("offsets_recovered_total") == 3
    guard.taken(admitted)
    assert table[checkpoint_key(TOPIC, 0)] == {"offset": 7}
    assert [m.offset for m in acknowledged] == [3, 4, 5]  # only what the guard read, not Faust's own


def test_redelivered_offsets_are_dropped_and_a_confirmed_gap_is_passed_over():
    broker = Broker({0: [0, 1, 2, 5, 6]})  # 3 and 4 do not exist (compaction, transaction markers)
    table = {checkpoint_key(TOPIC, 0): {"offset": 1}}
    guard, metrics = make_guard(broker, table)
    admitted = admit(guard, [Event(0, 0), Event(0, 1), Event(0, 2), Event(0, 5), Event(0, 6), Event(0, 6)])
    assert offsets(admitted) == [(0, 2), (0, 5), (0, 6)]
    assert metrics.get("offsets_dropped_total", reason="already taken") == 3
    assert metrics.get("offsets_recovered_total") == 0
    assert broker.reads == [(0, 3, 5)]


def test_without_a_checkpoint_the_group_offset_then_the_log_start_is_due():
    broker = Broker({0: list(range(40)), 1: list(range(40))}, committed={1: 30})
    guard, metrics = make_guard(broker)
    # partition 0: nothing committed and a first event at the end (seen with two workers
    # joining on a backlog): everything before it is read; partition 1 trusts the group
    admitted = admit(guard, [Event(0, 36), Event(1, 30)])
    assert offsets(admitted) == [(0, o) for o in range(37)] + [(1, 30)]
    assert metrics.get("offsets_recovered_total") == 36


def test_partitions_not_assigned_are_dropped_and_reset_reads_the_checkpoint_again():
    broker = Broker({0: list(range(20)), 1: list(range(20))})
    table = {checkpoint_key(TOPIC, 0): {"offset": 4}, checkpoint_key(TOPIC, 1): {"offset": 9}}
    guard, metrics = make_guard(broker, table, assigned={0})
    assert offsets(admit(guard, [Event(0, 5), Event(1, 10)])) == [(0, 5)]
    assert metrics.get("offsets_dropped_total", reason="not assigned") == 1
    # another worker took partition 0 on to offset 12 meanwhile; after a rebalance this one
    # must not trust what it remembered (6 due) but the checkpoint in the table
    table[checkpoint_key(TOPIC, 0)] = {"offset": 12}
    guard.reset()
    assert offsets(admit(guard, [Event(0, 6), Event(0, 13)])) == [(0, 13)]


def test_checkpoint_keys_cannot_be_ids():
    import json

    import schemas
    import pytest

    key = checkpoint_key(TOPIC, 0)
    assert is_checkpoint_key(key) and not is_checkpoint_key("user-1")
    event = {"user_id": key, "item_id": "i1", "type": "view", "event_time": "2026-01-01T00:00:00Z"}
    with pytest.raises(schemas.InvalidEvent, match="user_id"):
        schemas.parse("interaction", json.dumps(event).encode())
    with pytest.raises(schemas.InvalidEvent, match="item_id"):
        schemas.parse("item", json.dumps({"item_id": key, "title": "t", "event_time": "2026-01-01T00:00:00Z"}).encode())


def test_an_idle_partition_committed_past_its_checkpoint_is_caught_up_without_waiting_for_an_event():
    broker = Broker({0: list(range(10)), 1: list(range(10))}, committed={0: 10, 1: 4})
    table = {checkpoint_key(TOPIC, 0): {"offset": 5}, checkpoint_key(TOPIC, 1): {"offset": 3}}
    guard, metrics = make_guard(broker, table, assigned={0, 1})
    applied: list = []

    async def process(events):
        applied.extend(events)

    asyncio.run(guard.catch_up(process))
    assert offsets(applied) == [(0, 6), (0, 7), (0, 8), (0, 9)]  # partition 1 is where it should be
    assert table[checkpoint_key(TOPIC, 0)] == {"offset": 9}
    assert guard.next_offset == {0: 10, 1: 4}
    asyncio.run(guard.catch_up(process))  # once per assignment: nothing read twice
    assert len(applied) == 4 and broker.reads == [(0, 6, 10)]


def test_an_idle_partition_without_a_committed_offset_is_caught_up_to_the_log_end():
    """The CI failure of the three-worker kill -9 test: a partition's owner applied part of it,
    committed nothing and was killed after the replay ended; its new owner's consumer began at the
    log's end, so no event would ever come. Once a log's end has stood still for a tick, the
    records from the checkpoint (partition 0), or from the log start where nothing was applied
    (partition 1, written to between the first two checks), to the end are read and applied, in
    chunks; an empty partition (2) is simply due from 0."""
    from streams.kafka import continuity

    broker = Broker({0: list(range(12)), 1: list(range(7)), 2: []})
    table = {checkpoint_key(TOPIC, 0): {"offset": 3}}
    guard, metrics = make_guard(broker, table, assigned={0, 1, 2})
    batches: list = []

    async def process(events):
        batches.append(offsets(events))

    chunk, continuity.CATCH_UP_CHUNK = continuity.CATCH_UP_CHUNK, 5
    try:
        asyncio.run(guard.catch_up(process))
        assert batches == [] and broker.reads == []  # the first check notes each log's end
        broker.offsets[1].append(7)  # partition 1 is still being written to: it waits another tick
        asyncio.run(guard.catch_up(process))
        assert [b[0][0] for b in batches] == [0, 0] and guard.next_offset == {0: 12, 2: 0}
        asyncio.run(guard.catch_up(process))
    finally:
        continuity.CATCH_UP_CHUNK = chunk
    assert batches == [[(0, o) for o in range(4, 9)], [(0, o) for o in range(9, 12)],
                       [(1, o) for o in range(5)], [(1, 5), (1, 6), (1, 7)]]
    assert table[checkpoint_key(TOPIC, 0)] == {"offset": 11} and table[checkpoint_key(TOPIC, 1)] == {"offset": 7}
    assert guard.next_offset == {0: 12, 1: 8, 2: 0}
    assert metrics.get("offsets_recovered_total") == 16
    # what the stream delivers afterwards (had the consumer begun at the checkpoint) is dropped as taken
    assert offsets(admit(guard, [Event(0, 10), Event(0, 12)])) == [(0, 12)]
    asyncio.run(guard.catch_up(process))  # once per assignment
    assert len(batches) == 4


def test_an_idle_partition_with_only_a_committed_offset_asks_the_broker_once_per_assignment():
    """No checkpoint, a committed offset: the consumer begins there, so that offset is due (as at
    a first event) and the check is not repeated at every tick; a rebalance asks again."""
    class Counting(Broker):
        asked = 0

        def committed(self, partition):
            self.asked += 1
            return super().committed(partition)

    broker = Counting({0: list(range(10))}, committed={0: 6})
    guard, _ = make_guard(broker, assigned={0})
    applied: list = []

    async def process(events):
        applied.extend(events)

    for _ in range(3):
        asyncio.run(guard.catch_up(process))
    assert broker.asked == 1 and guard.next_offset == {0: 6} and applied == [] and broker.reads == []
    assert offsets(admit(guard, [Event(0, 6)])) == [(0, 6)]
    guard.reset()
    asyncio.run(guard.catch_up(process))
    assert broker.asked == 2


def test_item_stats_take_no_checkpoint_for_an_item():
    from streams.catalog import ItemStats

    stats = ItemStats(half_life=3600.0)
    stats.apply(checkpoint_key("item-pairs", 0), {"offset": 41})  # a changelog or restore-scan entry
    assert stats.counts == {}


def test_a_catch_up_check_the_broker_cannot_answer_is_retried_at_the_next_tick_not_a_crash():
    """Seen in the broker-restart test: the committed-offset query raised NOT_COORDINATOR while
    the broker came back, the exception left the timer, and Faust stopped the worker."""
    from confluent_kafka import KafkaError, KafkaException

    class Recovering(Broker):
        failures = 1

        def committed(self, partition):
            if self.failures:
                self.failures -= 1
                raise KafkaException(KafkaError(KafkaError.NOT_COORDINATOR, "Not coordinator"))
            return super().committed(partition)

    broker = Recovering({0: list(range(10))}, committed={0: 10})
    table = {checkpoint_key(TOPIC, 0): {"offset": 5}}
    guard, metrics = make_guard(broker, table, assigned={0})
    applied: list = []

    async def process(events):
        applied.extend(events)

    asyncio.run(guard.catch_up(process))
    assert applied == [] and metrics.get("catch_up_errors_total") == 1 and guard.next_offset == {}
    asyncio.run(guard.catch_up(process))
    assert offsets(applied) == [(0, 6), (0, 7), (0, 8), (0, 9)]


def test_a_partition_the_broker_cannot_answer_for_does_not_hold_back_the_others():
    """The catch-up returned at the first partition whose check failed, skipping every partition
    after it for that tick (a partition led by a recovering broker held back the rest)."""
    from confluent_kafka import KafkaError, KafkaException

    class OneLeaderDown(Broker):
        def committed(self, partition):
            if partition == 0:
                raise KafkaException(KafkaError(KafkaError.NOT_COORDINATOR, "Not coordinator"))
            return super().committed(partition)

    broker = OneLeaderDown({0: list(range(10)), 1: list(range(10)), 2: list(range(10))}, committed={1: 10, 2: 10})
    table = {checkpoint_key(TOPIC, p): {"offset": 5} for p in (0, 1, 2)}
    guard, metrics = make_guard(broker, table, assigned={0, 1, 2})
    applied: list = []

    async def process(events):
        applied.extend(events)

    asyncio.run(guard.catch_up(process))
    assert offsets(applied) == [(p, o) for p in (1, 2) for o in range(6, 10)]
    assert metrics.get("catch_up_errors_total") == 1 and 0 not in guard.next_offset


def test_the_reader_retries_a_retriable_broker_error_and_raises_any_other(monkeypatch):
    from confluent_kafka import KafkaError, KafkaException

    from streams.kafka.continuity import PartitionReader

    monkeypatch.setattr("time.sleep", lambda s: None)
    answers = [KafkaException(KafkaError(KafkaError.NOT_COORDINATOR, "moving")), 7]

    def call():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert PartitionReader._retrying(call) == 7
    fatal = KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied"))
    answers[:] = [fatal, 7]
    import pytest

    with pytest.raises(KafkaException):
        PartitionReader._retrying(call)


def test_a_partition_the_stream_stops_delivering_is_read_from_the_broker(caplog):
    """Seen after a kill -9 and a restart: two partitions caught up to their committed offsets,
    and the consumer never delivered a record after them. Once the log is seen past the next
    offset due, and STALLED_CHECKS checks later no event has come, the guard reads the rest and
    applies it; a partition whose events keep coming, or that is at its log's end, is left alone.
    The warning carries the consumer's state of each stalled partition, so that a stall names the
    layer that held it."""
    from streams.kafka.continuity import STALLED_CHECKS

    broker = Broker({0: list(range(12)), 1: list(range(12)), 2: list(range(5))})
    guard, metrics = make_guard(broker, assigned={0, 1, 2}, diagnose=lambda p: {"partition_asked": p})
    applied: list = []

    async def process(events):
        applied.extend(offsets(events))

    assert offsets(admit(guard, [Event(0, 0), Event(1, 0), Event(2, 0)])) == [(0, 0), (1, 0), (2, 0)]
    guard.taken([])
    delivered = 0
    for n in range(2 * STALLED_CHECKS):  # the logs of 0 and 2 are seen past 1 at check STALLED_CHECKS + 1
        asyncio.run(guard.catch_up(process))
        delivered += 1
        admit(guard, [Event(1, delivered)])  # partition 1 keeps getting events; 0 and 2 do not
        assert applied == []
    asyncio.run(guard.catch_up(process))  # 0 and 2 still at 1, STALLED_CHECKS checks after that sighting
    assert applied == [(0, o) for o in range(1, 12)] + [(2, o) for o in range(1, 5)]
    assert metrics.get("stalled_catch_ups_total") == 2 and broker.reads == [(0, 1, 12), (2, 1, 5)]
    assert guard.next_offset == {0: 12, 1: delivered + 1, 2: 5}
    warnings = [r.getMessage() for r in caplog.records if "no record delivered" in r.getMessage()]
    assert len(warnings) == 2 and "{'partition_asked': 0}" in warnings[0] and "{'partition_asked': 2}" in warnings[1]
    # what the stream delivers afterwards is dropped as taken
    assert offsets(admit(guard, [Event(0, 7), Event(0, 11)])) == []


def test_a_record_written_just_before_a_check_is_left_to_the_stream(caplog):
    """Measured in the suite and in eval-stream: a partition idle for a few checks got its next
    record 9 ms (interactions) and 119 ms (item pairs, batched for up to a second) before a check,
    and the guard called it a stall, read it from the broker and logged the consumer's state.
    A record first seen in the log at a check has time to come through the stream."""
    from streams.kafka.continuity import STALLED_CHECKS

    broker = Broker({0: [0]})
    guard, metrics = make_guard(broker, assigned={0})
    applied: list = []

    async def process(events):
        applied.extend(offsets(events))

    admit(guard, [Event(0, 0)])
    for _ in range(STALLED_CHECKS):  # idle, at its log's end
        asyncio.run(guard.catch_up(process))
    broker.offsets[0].append(1)  # written just before the next check
    asyncio.run(guard.catch_up(process))
    assert applied == [] and broker.reads == [] and metrics.get("stalled_catch_ups_total") == 0
    assert offsets(admit(guard, [Event(0, 1)])) == [(0, 1)]  # the stream's own delivery, not a duplicate
    for _ in range(3 * STALLED_CHECKS):
        asyncio.run(guard.catch_up(process))
    assert applied == [] and "no record delivered" not in caplog.text


def test_a_stage_that_batches_for_longer_gets_as_many_checks_more():
    """The item-pairs stage may hold a delivered record for its whole window (MMSR_INCREMENTS_WITHIN):
    a window longer than STALLED_CHECKS checks must not read as a stall."""
    from streams.kafka.continuity import STALLED_CHECKS

    broker = Broker({0: list(range(4))})
    holds_for = STALLED_CHECKS + 2.5
    guard, metrics = make_guard(broker, assigned={0}, holds_for=holds_for)
    assert guard.stalled_checks == STALLED_CHECKS + 4
    applied: list = []

    async def process(events):
        applied.extend(offsets(events))

    admit(guard, [Event(0, 0)])
    for _ in range(2 * guard.stalled_checks):  # the first sighting, then one check short of the second
        asyncio.run(guard.catch_up(process))
    assert applied == []
    asyncio.run(guard.catch_up(process))
    assert applied == [(0, 1), (0, 2), (0, 3)] and metrics.get("stalled_catch_ups_total") == 1


def test_a_stalled_partition_at_its_log_end_costs_one_query_per_stalled_period():
    from streams.kafka.continuity import STALLED_CHECKS

    class Counting(Broker):
        ends = 0

        def end(self, partition):
            self.ends += 1
            return super().end(partition)

    broker = Counting({0: list(range(3))})
    guard, _ = make_guard(broker, assigned={0})
    admit(guard, [Event(0, 0), Event(0, 1), Event(0, 2)])
    applied: list = []

    async def process(events):
        applied.extend(events)

    for _ in range(3 * (STALLED_CHECKS + 1)):
        asyncio.run(guard.catch_up(process))
    assert applied == [] and broker.ends == 3 and broker.reads == []


def test_a_stall_is_caught_up_and_logged_even_when_the_consumer_s_state_cannot_be_read(caplog):
    from streams.kafka.continuity import STALLED_CHECKS

    def unreadable(partition):
        raise AttributeError("'Consumer' object has no attribute '_read_offset'")  # as after a Faust upgrade

    broker = Broker({0: list(range(6))})
    guard, metrics = make_guard(broker, assigned={0}, diagnose=unreadable)
    applied: list = []

    async def process(events):
        applied.extend(offsets(events))

    admit(guard, [Event(0, 0)])
    for _ in range(2 * STALLED_CHECKS + 1):  # seen past 1 at check STALLED_CHECKS + 1, stalled STALLED_CHECKS later
        asyncio.run(guard.catch_up(process))
    assert applied == [(0, o) for o in range(1, 6)] and metrics.get("stalled_catch_ups_total") == 1
    assert "unreadable': \"AttributeError" in caplog.text
