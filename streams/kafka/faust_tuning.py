"""What the worker changes in Faust, each for a bug seen here or a cost measured here.

Faust delivers every record through several layers of Python (the consumer's drain loop,
sensors, the conductor, a codec lookup, the stream's iterator and acks): a bare Faust agent takes
63.6 us per message on the 2-core machine as Faust comes, and 24.9 us with the changes here, where
aiokafka alone hands a message over in 1.0 us (``bench/faust_floor.py``, medians of 3 rounds). At
about 100 us per interaction for the whole worker, Faust is the largest single cost of ingest. The
changes keep Faust's behaviour and remove work that nothing here uses; the figures given with
each were measured one change at a time on the bare agent. ``apply`` makes them, once per process,
before the app is built.
"""
from __future__ import annotations

import asyncio
import logging
import types

import faust
from faust.sensors.monitor import Monitor

log = logging.getLogger("mmsr.worker")


def apply(settings) -> None:
    drain_producer_buffer_on_flush()
    deliver_each_message_without_four_tasks()
    fetch_with_short_holds(settings.fetch_wait_ms)
    producer_buffer_size_without_settings_reads()
    events_without_settings_reads()


def events_without_settings_reads() -> None:
    """Faust makes each delivered message's Event with the class named by its ``Event`` setting,
    read through its settings object per message (a descriptor, a registry lookup): about 1.3 us
    of the bare agent's 29 (``bench/faust_floor.py``). The class is read once per app instead."""
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
    Faust's own (raw)."""

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
    Monitor (commits, rebalances, web requests) is Faust's."""

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


def producer_buffer_size_without_settings_reads() -> None:
    """Faust asks its producer buffer's size before delivering each message (to wait while table
    writes back up), and each time reads ``producer_threaded`` through its settings object: about
    2 us of the 30 per message left to a bare agent (``bench/faust_floor.py``). The setting is read
    once per buffer instead; the size is the same queue's length."""
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


FLUSH_PATIENCE_S = 120.0


def drain_producer_buffer_on_flush() -> None:
    """Make Faust's producer-buffer flush wait until the buffer is empty.

    Faust writes table changes to its producer buffer and flushes it before every offset commit
    and before giving up partitions at a rebalance, but that flush returns as soon as 0.1 s pass
    without a send (``ProducerBuffer.flush_atmost``). Two things then go wrong, both seen here:
    offsets are committed before the changelog writes of their events, and changelog records of
    a partition this worker has just given up are sent after the next owner has started writing.
    Faust records the offset of each of its own sends as the partition's restored-up-to mark, so
    when this worker got the partition back, it restored only from past that late record and
    never read the other worker's writes before it (`test_scale_out`: a survivor that took back a
    partition showed users at 13 of 53 interactions, with nothing left to read). The flush now
    waits until the buffer is empty (a warning every ``FLUSH_PATIENCE_S`` while it cannot send).
    """
    from faust.transport.producer import ProducerBuffer

    if getattr(ProducerBuffer.flush, "drains", False):
        return

    async def flush(self) -> None:
        waited = 0.0
        while self.size:
            if self.state != "running":
                raise RuntimeError("Cannot flush: Producer not Running")
            self.message_sent.clear()
            try:
                await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)
            except asyncio.TimeoutError:
                waited += 0.1
                if waited >= FLUSH_PATIENCE_S:
                    log.warning("producer buffer: %d changelog records not sent for %.0f s", self.size, waited)
                    waited = 0.0

    flush.drains = True
    ProducerBuffer.flush = flush


def fetch_with_short_holds(wait_ms: int) -> None:
    """Set the fetch wait of the worker's consumer (Faust passes a fixed 1,500 ms to aiokafka).

    aiokafka keeps one fetch in flight per broker, sent for the partitions that have no records
    buffered, and the broker holds it until one of them has data or the wait ends. On a backlog
    that fetch names only partitions that are idle at the moment, such as item-pairs, which this
    very worker feeds: when the interactions buffered meanwhile ran out, nothing could be fetched
    until the wait ended, and the worker sat idle (timeline of a 100,000-interaction ingest: idle
    gaps of 0.5 to 1 s, every second or two, once polls were bounded by ``poll_records``).
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    original = getattr(AIOKafkaConsumerThread._create_worker_consumer, "original",
                       AIOKafkaConsumerThread._create_worker_consumer)

    def create_worker_consumer(self, transport):
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = wait_ms  # read when the consumer starts its fetcher
        return consumer

    create_worker_consumer.original = original
    AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer


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


def deliver_each_message_without_four_tasks(consumer_class=None) -> None:
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
            await asyncio.sleep(0)
            return WaitResults([first], [finished.value], False)
        except BaseException:
            close_unstarted(other)
            raise
        return await original(self, asyncio.ensure_future(resumed(first, awaiting)), other)

    wait_first.eager = True
    consumer_class.wait_first = wait_first
