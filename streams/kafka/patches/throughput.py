"""Patches that remove per-message work nothing here uses: Faust delivers every record through
several layers of Python (the consumer's drain loop, sensors, the conductor, a codec lookup, the
stream's iterator and acks). A bare Faust agent takes 64.2 us per message on the 2-core machine
as Faust comes and 23.4 us with these changes, where aiokafka alone hands a message over in 1.0
us (``bench/faust_floor.py``, medians of 3 rounds). Each keeps Faust's behaviour; the figures
given with each were measured one change at a time on the bare agent.
"""
from __future__ import annotations

import asyncio
import logging
import types

import faust
from faust.sensors.monitor import Monitor

log = logging.getLogger(__name__)


def events_without_settings_reads() -> None:
    """Faust makes each delivered message's Event with the class named by its ``Event`` setting,
    read through its settings object per message (a descriptor, a registry lookup): about 1.3 us
    of the bare agent's 29 (``bench/faust_floor.py``). The class is read once per app instead.

    Replaces ``faust.app.base.App.create_event`` (faust/app/base.py: ``self.conf.Event(...)`` per
    message). Shown by
    ``tests/unit/test_patches.py::test_events_are_made_with_the_app_s_event_class_read_once``; the cost
    by ``bench/faust_floor.py``.
    """
    from faust.app.base import App

    if getattr(App.create_event, "cached_setting", False):
        return

    def create_event(self, key, value, headers, message):
        event_class = self.__dict__.get("_event_class")
        if event_class is None:
            event_class = self.__dict__["_event_class"] = self.conf.Event
        return event_class(self, key, value, headers, message)

    create_event.cached_setting = True
    create_event.__doc__ = App.create_event.__doc__
    App.create_event = create_event


class RawBytes(faust.Schema):
    """A topic's keys and values as the bytes on the broker; the stages parse and check them
    (orjson and the compiled JSON Schema validators). Faust's "raw" codec gives the same bytes,
    but through a codec lookup per key and per value (settings reads, the registry, the codec
    chain): 35 against 41 us per message for a bare agent (``bench/faust_floor.py``). Sending is
    Faust's own (raw).

    Stands in for Faust's ``raw`` codec lookup (faust/serializers/registry.py, per key and per value).
    Shown by ``tests/unit/test_patches.py::test_raw_bytes_gives_what_faust_s_raw_codec_gives`` and
    ``test_raw_bytes_sends_as_faust_s_raw_codec_does``.
    """

    def __init__(self) -> None:
        super().__init__(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    def loads_key(self, app, message, *, loads=None, serializer=None):
        return message.key

    def loads_value(self, app, message, *, loads=None, serializer=None):
        return message.value


class QuietMonitor(Monitor):
    """Faust's Monitor without its per-message bookkeeping (counts, timings and offsets per
    message, stream event, table access and send), which nothing in the worker reads: its metrics
    are ``streams.metrics``'. 35 against 41 us per message for a bare agent; the rest of the
    Monitor (commits, rebalances, web requests) is Faust's.

    Overrides ``faust.sensors.monitor.Monitor``'s per-message hooks (``on_message_in`` and the rest).
    Shown by ``tests/unit/test_patches.py::test_the_quiet_monitor_overrides_keep_faust_s_signatures``
    and ``test_the_quiet_monitor_keeps_no_per_message_state_and_faust_s_delegate_accepts_it``.
    """

    def on_message_in(self, tp, offset, message) -> None:
        pass

    def on_stream_event_in(self, tp, offset, stream, event):
        return None

    def on_stream_event_out(self, tp, offset, stream, event, state=None) -> None:
        pass

    def on_message_out(self, tp, offset, message) -> None:
        pass

    def on_table_get(self, table, key) -> None:
        pass

    def on_table_set(self, table, key, value) -> None:
        pass

    def on_send_initiated(self, producer, topic, message, keysize, valsize):
        return None

    def on_send_completed(self, producer, state, metadata) -> None:
        pass

    def track_tp_end_offset(self, tp, offset) -> None:
        pass


def cache_producer_buffer_size() -> None:
    """Faust asks its producer buffer's size before delivering each message (to wait while table
    writes back up), and each time reads ``producer_threaded`` through its settings object: about
    2 us of the 30 per message left to a bare agent (``bench/faust_floor.py``). The setting is read
    once per buffer instead; the size is the same queue's length.

    Replaces the ``faust.transport.producer.ProducerBuffer.size`` property (faust/transport/producer.py
    reads ``app.conf.producer_threaded`` at each call). Shown by
    ``tests/unit/test_patches.py::test_the_producer_buffer_size_is_the_queue_length_with_the_setting_read_once``.
    """
    from faust.transport.producer import ProducerBuffer

    if getattr(ProducerBuffer.size.fget, "cached_setting", False):
        return

    def size(self) -> int:
        threaded = self.__dict__.get("_threaded")
        if threaded is None:
            threaded = self.__dict__["_threaded"] = bool(self.app.conf.producer_threaded)
        if threaded:
            return len(self.queue._queue) if self.queue else 0
        return len(self.pending._queue)

    size.cached_setting = True
    ProducerBuffer.size = property(size, doc=ProducerBuffer.size.__doc__)


def close_unstarted(awaitable) -> None:
    """The flow waiter mode's ``wait_first`` would have started, closed unstarted (no warning)."""
    if asyncio.iscoroutine(awaitable):
        awaitable.close()


@types.coroutine
def resumed(coroutine, awaiting):
    """The rest of ``coroutine``, which was run by hand until it yielded ``awaiting`` (what it
    waits on): as a coroutine a task can run, passing on what the task sends and throws."""
    while True:
        try:
            sent = yield awaiting
        except GeneratorExit:
            coroutine.close()
            raise
        except BaseException as exc:  # the task's cancellation, or the awaited future's error
            try:
                awaiting = coroutine.throw(exc)
            except StopIteration as finished:
                return finished.value
            continue
        try:
            awaiting = coroutine.send(sent)
        except StopIteration as finished:
            return finished.value


def deliver_inline(consumer_class=None) -> None:
    """Give Faust's consumer a cheaper ``wait_first`` for the call its drain loop makes per message.

    Faust hands every fetched message to the streams with ``wait_first(callback(message),
    suspend_flow.wait())``, so that a rebalance can interrupt a delivery blocked on a full stream
    buffer. mode's ``wait_first`` makes four tasks for that (the callback, the flow event, and the
    service's stopped and crashed events), waits on all four and cancels three: about 16 us per
    message. Here the callback runs inline, in the drain loop's own task, and the streams get one
    turn of the loop after it; when it finishes without waiting, as it does unless a buffer is
    full, its result is returned and the unstarted flow coroutine closed. A callback that does wait
    is handed over where it waits (``resumed``) to a task that mode's own ``wait_first`` races
    against the flow, with the same outcome as before: the first to finish wins and the callback is
    cancelled if the flow stops first. (The previous version gave each callback a task of its own:
    25.5 against 23.2 us per message for a bare agent, ``bench/faust_floor.py``, 3 rounds each.)

    Replaces ``faust.transport.consumer.Consumer.wait_first`` (mode/services.py ``Service.wait_first``:
    a task per awaitable, per message). Shown by ``tests/unit/test_message_delivery.py``.
    """
    from mode.services import WaitResults

    if consumer_class is None:
        from faust.transport.consumer import Consumer as consumer_class
    original = consumer_class.wait_first
    if getattr(original, "eager", False):
        return

    async def wait_first(self, *coros, timeout=None):
        if (timeout is not None or len(coros) != 2 or not asyncio.iscoroutine(coros[0])
                or self._stopped.is_set() or self._crashed.is_set()):
            return await original(self, *coros, timeout=timeout)
        first, other = coros
        try:
            awaiting = first.send(None)
        except StopIteration as finished:
            close_unstarted(other)
            # the streams' turn: with a turn only every 16 or 64 deliveries, their buffers filled and
            # every delivery after took mode's own wait_first (163 and 177 us per message)
            await TURNS.sleep(0)
            return WaitResults([first], [finished.value], False)
        except BaseException:
            close_unstarted(other)
            raise
        return await original(self, asyncio.ensure_future(resumed(first, awaiting)), other)

    wait_first.eager = True
    consumer_class.wait_first = wait_first


class Turns:
    """``asyncio.sleep`` for the per-message turns of Faust's stream iterator and consumer: a turn
    of the loop at every ``every``-th ``sleep(0)``, none at the others (other delays: asyncio's).

    Faust's stream iterator awaits ``sleep(0)`` before each message, and the consumer's drain loop
    (``deliver_inline``) gives the streams a turn after each delivery: a
    pass of the event loop per message for each. Taking them every 8th message took a bare agent
    from 24.0 to 21.8 us per message (every 32nd: 20.8; ``bench/faust_floor.py``), and one worker
    folded 10,757 -> 11,609/s (every 32nd: 11,555; ``bench/ingest.py``, medians of 2 alternated
    rounds). Both sides skip alike, so the drain loop still puts about as many messages per pass
    as a stream takes (a turn every 16th delivery with the streams at every message filled their
    buffers: see ``deliver_inline``)."""

    def __init__(self, every: int):
        self.every, self.calls = every, 0

    def sleep(self, delay, result=None):
        if delay == 0 and self.every > 1:
            self.calls += 1
            if self.calls % self.every:
                return _NOW
        return asyncio.sleep(delay, result)


class _Now:
    """An awaitable that is done at once: ``await`` on it takes no turn of the loop."""

    __slots__ = ()

    def __await__(self):
        return None
        yield  # noqa: unreachable; makes this a generator


_NOW = _Now()
TURNS = Turns(1)  # the consumer's: set by ``streams_take_turns_every``


def streams_take_turns_every(every: int) -> None:
    """Faust's compiled stream iterator and the consumer's drain loop take a turn of the loop every
    ``every`` messages (1: at each, as Faust does).

    Replaces ``sleep`` in ``faust._cython.streams`` (faust/_cython/streams.pyx awaits ``sleep(0)``
    before each message). Shown by
    ``tests/unit/test_patches.py::test_faust_s_stream_iterator_takes_the_turns_and_delivers_every_message_in_order``.
    """
    TURNS.every = every
    try:
        from faust._cython import streams as cython_streams
    except ImportError:  # only with MMSR_ALLOW_UNTESTED_FAUST (compat.check lists this target)
        log.warning("faust._cython.streams is missing: the stream iterator takes a turn at every message")
        return
    cython_streams.sleep = TURNS.sleep if every > 1 else asyncio.sleep
