"""How events reach the stages in batches: the fetch wait of the worker's consumer, and a take
that hands a burst over once its input goes quiet.
"""
from __future__ import annotations

import asyncio
from typing import Callable


def fetch_with_short_holds(wait_ms: int) -> None:
    """Set the fetch wait of the worker's consumer (Faust passes a fixed 1,500 ms to aiokafka).

    aiokafka keeps one fetch in flight per broker, sent for the partitions that have no records
    buffered, and the broker holds it until one of them has data or the wait ends. On a backlog
    that fetch names only partitions that are idle at the moment, such as item-pairs, which this
    very worker feeds: when the interactions buffered meanwhile ran out, nothing could be fetched
    until the wait ended, and the worker sat idle (timeline of a 100,000-interaction ingest: idle
    gaps of 0.5 to 1 s, every second or two, once polls were bounded by ``poll_records``).

    Replaces ``AIOKafkaConsumerThread._create_worker_consumer`` (wrapped;
    faust/transport/drivers/aiokafka.py passes ``fetch_max_wait_ms=1500``). Shown by
    ``tests/unit/test_patches.py::test_the_worker_consumer_is_made_with_the_configured_fetch_wait``.
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


def take_events_until_quiet(stream, max_: int, within: float, quiet: float,
                            upstream_busy: Callable[[], bool] = lambda: False):
    """Faust's ``Stream.take_events`` with one more reason to hand a batch over: no event came
    for ``quiet`` seconds and ``upstream_busy()`` says no more are on their way. Batches still end
    at ``max_`` events or ``within`` seconds, and events are acknowledged as Faust's own take
    acknowledges them, after the batch is done with.

    The neighbours stage batches item-pairs messages for a second, since each batch rewrites every
    record it touches. When a burst ends, its last batch is folded at once instead of waiting out
    the second (the records lag the interactions by ``quiet`` plus the fold, not by up to
    ``within``). The input alone was not enough to tell: on a backlog the item pairs come back from
    the broker in bursts, and cutting batches at every gap of 0.1 s folded 9-12 batches of 100,000
    interactions instead of 6-7 (each rewriting some 1,100 records). ``quiet`` 0: Faust's own take.

    Stands in for ``faust.Stream.take_events`` (faust/streams.py, which holds a batch to the end of its
    window). Shown by
    ``tests/unit/test_patches.py::test_a_burst_is_handed_over_once_its_input_goes_quiet_not_at_the_end_of_the_window``
    and the tests after it.
    """
    if quiet <= 0 or quiet >= within:
        return stream.take_events(max_, within=within)
    agen = _take_events_until_quiet(stream, max_, within, quiet, upstream_busy)
    stream._active_agens.add(agen)  # closed with the stream, as Faust tracks its own takes
    return agen


async def _take_events_until_quiet(stream, max_: int, within: float, quiet: float, upstream_busy):
    from mode.utils.futures import notify

    events: list = []
    buffer_full, buffer_consumed = asyncio.Event(), asyncio.Event()
    consuming: asyncio.Future | None = None
    stream_enable_acks = stream.enable_acks
    loop = asyncio.get_running_loop()

    async def add_to_buffer(value):
        nonlocal consuming
        try:
            if consuming is not None:  # the agent has the last batch: wait until it is done with it
                try:
                    await consuming
                finally:
                    consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("Take buffer found current_event is None")
            events.append(event)
            if len(events) >= max_:
                buffer_full.set()
                buffer_consumed.clear()
                await stream.wait(buffer_consumed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    stream.enable_acks = False  # acknowledged below, once the batch is done with
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            deadline, seen = loop.time() + within, len(events)
            while (remaining := deadline - loop.time()) > 0:
                # (what this returns cannot be used: mode answers "stopped" at a timeout too)
                await stream.wait_for_stopped(buffer_full, timeout=min(quiet, remaining))
                if buffer_full.is_set() or stream.should_stop:
                    break
                if events and len(events) == seen and not upstream_busy():  # nothing new for ``quiet`` seconds
                    break
                seen = len(events)
            if events:
                consuming = loop.create_future()
                try:
                    yield list(events)
                finally:
                    for event in events:
                        await stream.ack(event)
                    events.clear()
                    notify(consuming)
                    buffer_full.clear()
                    buffer_consumed.set()
    finally:
        stream.enable_acks = stream_enable_acks
        stream._processors.remove(add_to_buffer)
