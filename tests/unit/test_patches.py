"""What the worker changes in Faust (``streams.kafka.patches``): the same behaviour, less work per message."""
from __future__ import annotations

import asyncio
import inspect
import itertools
import time
import types

import faust
import pytest
from faust.sensors.monitor import Monitor
from faust.types import TP, Message

from streams.kafka.patches.batching import fetch_with_short_holds, take_events_until_quiet
from streams.kafka.patches.throughput import (QuietMonitor, RawBytes, Turns, cache_producer_buffer_size,
                                              streams_take_turns_every)

UNSTARTED_APPS: list = []


def unstarted_app(name: str, **kwargs) -> faust.App:
    """An app these tests run agents or recovery of without starting it (no broker)."""
    app = faust.App(name, autodiscover=False, **kwargs)
    UNSTARTED_APPS.append(app)
    return app


@pytest.fixture(autouse=True)
def close_the_consumer_loops_of_unstarted_apps():
    """An app never started still builds its Kafka consumer when a stream first iterates, and that
    consumer's thread makes an event loop of its own, closed only when the thread stops (mode's
    ``ServiceThread``): closed here, or each such test leaves one to a ResourceWarning."""
    yield
    while UNSTARTED_APPS:
        thread = getattr(UNSTARTED_APPS.pop()._consumer, "_thread", None)
        if thread is not None and not thread.thread_loop.is_closed():
            thread.thread_loop.close()


def message(key: bytes | None, value: bytes | None) -> Message:
    return Message("t", 0, 7, 0.0, 0, [], key, value, None, tp=TP("t", 0))


def decoded(schema: faust.Schema, msg: Message):
    async def run():
        app = faust.App("tuning-test", autodiscover=False)

        async def fail(exc, message):
            raise exc

        event = await schema.compile(app, on_key_decode_error=fail, on_value_decode_error=fail)(msg)
        return event.key, event.value

    return asyncio.run(run())


@pytest.mark.parametrize("key,value", [(b"user-1", b'{"a": 1}'), (None, b"x"), (b"k", b""), (b"\xff\x00", b"\x80")])
def test_raw_bytes_gives_what_faust_s_raw_codec_gives(key, value):
    faust_raw = faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    assert decoded(RawBytes(), message(key, value)) == decoded(faust_raw, message(key, value)) == (key, value)


def test_raw_bytes_sends_as_faust_s_raw_codec_does():
    app = faust.App("tuning-test", autodiscover=False)
    faust_raw = faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    for schema in (RawBytes(), faust_raw):
        assert schema.dumps_key(app, b"k", headers={})[0] == b"k"
        assert schema.dumps_value(app, b"v", headers={})[0] == b"v"


def test_the_quiet_monitor_overrides_keep_faust_s_signatures():
    """Faust calls these hooks positionally and by keyword; an upgrade that changed one would
    otherwise fail only at the first message."""
    overridden = [name for name, fn in vars(QuietMonitor).items() if inspect.isfunction(fn)]
    assert {"on_message_in", "on_stream_event_in", "on_stream_event_out", "on_message_out"} <= set(overridden)
    for name in overridden:
        assert inspect.signature(getattr(QuietMonitor, name)).parameters.keys() == \
            inspect.signature(getattr(Monitor, name)).parameters.keys(), name


def test_the_quiet_monitor_keeps_no_per_message_state_and_faust_s_delegate_accepts_it():
    from faust.sensors.base import SensorDelegate

    async def run():
        app = faust.App("tuning-test", autodiscover=False, monitor=QuietMonitor())
        monitor = app.monitor
        delegate = SensorDelegate(app)
        delegate.add(monitor)
        msg, tp = message(b"k", b"v"), TP("t", 0)
        delegate.on_message_in(tp, 7, msg)
        state = delegate.on_stream_event_in(tp, 7, object(), object())
        delegate.on_stream_event_out(tp, 7, object(), object(), state)
        delegate.on_message_out(tp, 7, msg)
        return monitor

    monitor = asyncio.run(run())
    assert isinstance(monitor, QuietMonitor)
    assert monitor.messages_received_total == 0 and monitor.events_total == 0 and not monitor.tp_read_offsets


@pytest.mark.parametrize("threaded", [False, True])
def test_the_producer_buffer_size_is_the_queue_length_with_the_setting_read_once(threaded):
    from faust.transport.producer import ProducerBuffer

    cache_producer_buffer_size()

    class Conf:
        reads = 0

        @property
        def producer_threaded(self):
            Conf.reads += 1
            return threaded

    async def run():
        buffer = ProducerBuffer()
        buffer.app = type("App", (), {"conf": Conf()})()
        queue = asyncio.Queue()
        if threaded:
            buffer.queue = queue
        else:
            buffer.pending = queue
        sizes = []
        for n in range(3):
            sizes.append(buffer.size)
            queue.put_nowait(n)
        sizes.append(buffer.size)
        return sizes

    assert asyncio.run(run()) == [0, 1, 2, 3] and Conf.reads == 1


def test_the_worker_consumer_is_made_with_the_configured_fetch_wait():
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    fetch_with_short_holds(75)
    fetch_with_short_holds(50)  # applied again (a second worker in one process): the last wins, not wrapped twice
    assert AIOKafkaConsumerThread._create_worker_consumer.original.__name__ == "_create_worker_consumer"

    async def run():
        app = faust.App("tuning-test", broker="kafka://127.0.0.1:1", autodiscover=False)
        thread = app.consumer._thread
        consumer = thread._create_worker_consumer(app.transport)
        try:
            return consumer._fetch_max_wait_ms
        finally:  # never started: closed here, with the thread's own loop, so neither leaks a socket
            await consumer.stop()
            thread.thread_loop.close()

    assert asyncio.run(run()) == 50


def test_events_are_made_with_the_app_s_event_class_read_once():
    from faust.app.base import App

    from streams.kafka.patches.throughput import events_without_settings_reads

    events_without_settings_reads()
    assert getattr(App.create_event, "cached_setting", False)

    class Tagged(faust.Event):
        pass

    app = faust.App("tuning-test", autodiscover=False, Event=Tagged)
    msg = message(b"k", b"v")
    first, second = app.create_event(b"k", b"v", [], msg), app.create_event(b"k2", b"v2", [], msg)
    assert type(first) is Tagged and (first.key, first.value, second.key) == (b"k", b"v", b"k2")
    assert first.app is app and first.message is msg
    plain = faust.App("tuning-test-2", autodiscover=False)  # each app its own class
    assert type(plain.create_event(b"k", b"v", [], msg)) is faust.Event


APP_NUMBERS = itertools.count()


def batching_agent(max_: int, within: float, quiet: float, hold: asyncio.Event | None = None,
                   upstream_busy=lambda: False):
    """An agent over ``take_events_until_quiet``: the batches it got (values, monotonic time), and
    the events' ack state while it held each batch. ``hold``: the agent waits on it per batch."""
    app = unstarted_app(f"take-quiet-{next(APP_NUMBERS)}", store="memory://")
    batches: list[tuple[list, float]] = []
    acked_while_held: list[bool] = []

    @app.agent()
    async def fold(stream):
        async for events in take_events_until_quiet(stream, max_, within, quiet, upstream_busy=upstream_busy):
            batches.append(([event.value for event in events], time.monotonic()))
            acked_while_held.extend(event.message.acked for event in events)
            if hold is not None:
                await hold.wait()

    return fold, batches, acked_while_held


async def batches_of(agent_, batches: list, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(len(values) for values, _ in batches) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def burst_of_three(within: float, quiet: float) -> tuple[list, float]:
    """Three events put at once to an agent over ``take_events_until_quiet``: the batches it got,
    and when the burst began."""
    async def run():
        fold, batches, _ = batching_agent(max_=100, within=within, quiet=quiet)
        async with fold.test_context() as agent:
            started = time.monotonic()
            for value in range(3):
                await agent.put(value)
            await batches_of(agent, batches, 3)
        return batches, started

    return asyncio.run(run())


def test_a_burst_is_handed_over_once_its_input_goes_quiet_not_at_the_end_of_the_window():
    batches, started = burst_of_three(within=60.0, quiet=0.05)
    assert [values for values, _ in batches] == [[0, 1, 2]]
    assert batches[0][1] - started < 30.0  # Faust's own take would hold it the whole 60 s window


def test_a_steady_input_is_not_cut_by_the_quiet_time_and_max_still_ends_a_batch():
    async def run():
        fold, batches, _ = batching_agent(max_=8, within=60.0, quiet=0.5)
        async with fold.test_context() as agent:
            for value in range(12):  # gaps of 20 ms, far under the 0.5 s quiet time
                await agent.put(value)
                await asyncio.sleep(0.02)
            await batches_of(agent, batches, 12)
        return batches

    assert [values for values, _ in asyncio.run(run())] == [list(range(8)), list(range(8, 12))]


def test_events_are_acknowledged_only_after_the_agent_is_done_with_their_batch():
    async def run():
        hold = asyncio.Event()
        fold, batches, acked_while_held = batching_agent(max_=100, within=60.0, quiet=0.05, hold=hold)
        async with fold.test_context() as agent:
            events = [await agent.put(value) for value in range(3)]
            await batches_of(agent, batches, 3)
            held = [event.message.acked for event in events]
            hold.set()
            deadline = time.monotonic() + 20
            while not all(event.message.acked for event in events) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return acked_while_held, held, [event.message.acked for event in events]

    acked_while_held, held, after = asyncio.run(run())
    assert acked_while_held == [False] * 3 and held == [False] * 3
    assert after == [True] * 3


def test_no_quiet_time_is_faust_s_own_take():
    batches, started = burst_of_three(within=1.0, quiet=0.0)
    assert [values for values, _ in batches] == [[0, 1, 2]]
    assert batches[0][1] - started >= 0.9  # held to the end of the window


def test_a_quiet_input_is_not_cut_while_its_upstream_is_busy():
    async def run():
        busy = {"on": True}
        fold, batches, _ = batching_agent(max_=100, within=60.0, quiet=0.05, upstream_busy=lambda: busy["on"])
        async with fold.test_context() as agent:
            for value in range(3):
                await agent.put(value)
            await asyncio.sleep(0.5)  # ten quiet times, the upstream busy throughout
            held = list(batches)
            busy["on"] = False
            await batches_of(agent, batches, 3)
        return held, batches

    held, batches = asyncio.run(run())
    assert held == []
    assert [values for values, _ in batches] == [[0, 1, 2]]



@pytest.mark.parametrize("every, awaits, turns", [(8, 16, 2), (8, 20, 2), (1, 5, 5)])
def test_turns_give_the_loop_a_pass_at_every_nth_sleep_only(every, awaits, turns):
    async def run():
        passes = {"n": 0}

        async def other_task():
            while True:
                passes["n"] += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(other_task())
        sleeper = Turns(every)
        for _ in range(awaits):
            assert await sleeper.sleep(0) is None
        task.cancel()
        return passes["n"]

    assert asyncio.run(run()) == turns


def test_turns_leave_real_delays_to_asyncio():
    async def run():
        started = time.monotonic()
        await Turns(8).sleep(0.05)
        return time.monotonic() - started

    assert asyncio.run(run()) >= 0.04


def test_faust_s_stream_iterator_takes_the_turns_and_delivers_every_message_in_order():
    from faust._cython import streams as cython_streams

    streams_take_turns_every(8)
    try:
        assert cython_streams.sleep.__self__.every == 8

        async def run():
            app = unstarted_app(f"turns-{next(APP_NUMBERS)}", store="memory://")
            seen: list = []

            @app.agent()
            async def count(stream):
                async for value in stream:
                    seen.append(value)

            async with count.test_context() as agent:
                for value in range(100):
                    await agent.put(value)
                deadline = time.monotonic() + 20
                while len(seen) < 100 and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            return seen

        assert asyncio.run(run()) == list(range(100))
    finally:
        streams_take_turns_every(1)
    assert cython_streams.sleep is asyncio.sleep


class Coordinator:
    """What ``until_listed`` reads of aiokafka's GroupCoordinator: its subscription, the cluster
    metadata and a refresh that lists ``late`` topics after ``refreshes_needed`` refreshes."""

    _retry_backoff_ms = 1

    def __init__(self, listed: set[str], late: set[str], refreshes_needed: int):
        self._subscription = types.SimpleNamespace(subscription=types.SimpleNamespace(topics=listed | late))
        self.listed, self.late, self.needed, self.refreshes = set(listed), late, refreshes_needed, 0
        self._cluster = types.SimpleNamespace(partitions_for_topic=lambda t: {0, 1} if t in self.listed else None)
        self._client = types.SimpleNamespace(force_metadata_update=self.refresh)

    async def refresh(self):
        self.refreshes += 1
        if self.refreshes >= self.needed:
            self.listed |= self.late


@pytest.mark.parametrize("late,needed,refreshes", [(set(), 1, 0), ({"app-item-profiles-changelog"}, 3, 3)])
def test_the_leader_refreshes_the_metadata_until_it_lists_every_topic(late, needed, refreshes):
    from streams.kafka.patches.correctness import until_listed

    coordinator = Coordinator({"app-items"}, late, needed)
    assert asyncio.run(until_listed(coordinator)) == [] and coordinator.refreshes == refreshes


def test_a_topic_that_never_appears_is_waited_for_a_bounded_time(monkeypatch):
    from streams.kafka.patches import correctness

    monkeypatch.setattr(correctness, "METADATA_WAIT_S", 0.2)
    coordinator = Coordinator({"app-items"}, {"app-gone"}, refreshes_needed=10**9)
    started = time.monotonic()
    assert asyncio.run(correctness.until_listed(coordinator)) == ["app-gone"]
    assert 0.2 <= time.monotonic() - started < 5 and coordinator.refreshes >= 2


@pytest.mark.parametrize("patched", [True, False])
def test_no_record_delivered_during_the_end_of_recovery_seek_is_cleared_unread(patched):
    """Faust's own ``on_recovery_completed`` resumes the stream partitions, awaits the seek, then
    resumes the flow, which clears the stream buffers: a record the fetcher delivered during the
    seek is dropped unread (lost for good where the partition has no committed offset to seek
    back to). Patched, the partitions are fetched again only after the clear. The unpatched case
    documents Faust's behaviour, so that an upgrade that fixes it shows here."""
    from faust.tables.recovery import Recovery

    from streams.kafka.patches.correctness import resume_after_seek

    resume_after_seek()
    method = Recovery.on_recovery_completed if patched else Recovery.on_recovery_completed.__wrapped__

    async def run():
        app = unstarted_app(f"recovery-test-{patched}", store="memory://")
        consumer, stream_tp = app.consumer, TP("interactions", 1)
        consumer.assignment = lambda: {stream_tp}
        buffer = app.FlowControlQueue(maxsize=100, clear_on_resume=True)  # a stream's buffer
        # as at a rebalance: the flow stopped, the stream partitions paused
        app.flow_control.suspend()
        consumer.stop_flow()
        consumer.pause_partitions({stream_tp})
        delivered = []

        async def perform_seek():  # the fetcher drains while the seek waits on the consumer's thread
            await asyncio.sleep(0)
            if stream_tp in consumer._get_active_partitions():
                buffer.force_put_nowait("record 295")
                delivered.append("record 295")
            return {}

        consumer.perform_seek = perform_seek
        await method(app.tables.recovery, app.consumer_generation_id)
        kept = [buffer.get_nowait() for _ in range(buffer.qsize())]
        return delivered, kept, stream_tp in consumer._get_active_partitions(), consumer.flow_active

    delivered, kept, fetching, flowing = asyncio.run(run())
    assert fetching and flowing  # either way the stream partition is fetched and the flow runs after
    lost = [r for r in delivered if r not in kept]
    assert lost == ([] if patched else ["record 295"])
