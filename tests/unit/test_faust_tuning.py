"""What the worker changes in Faust (``streams.kafka.faust_tuning``): the same behaviour, less work per message."""
from __future__ import annotations

import asyncio
import inspect

import faust
import pytest
from faust.sensors.monitor import Monitor
from faust.types import TP, Message

from streams.kafka.faust_tuning import (QuietMonitor, RawBytes, fetch_with_short_holds,
                                        producer_buffer_size_without_settings_reads)


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

    producer_buffer_size_without_settings_reads()

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
        return consumer._fetch_max_wait_ms

    assert asyncio.run(run()) == 50


def test_events_are_made_with_the_app_s_event_class_read_once():
    from faust.app.base import App

    from streams.kafka.faust_tuning import events_without_settings_reads

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
