"""What the worker changes in Faust, each for a bug seen here or a cost measured here.

Faust delivers every record through several layers of Python (the consumer's drain loop,
sensors, the conductor, a codec lookup, the stream's iterator and acks): a bare Faust agent takes
64.2 us per message on the 2-core machine as Faust comes, and 23.4 us with the changes here, where
aiokafka alone hands a message over in 1.0 us (``bench/faust_floor.py``, medians of 3 rounds). At
about 80 us per interaction for the whole worker, Faust is the largest single cost of ingest. The
changes keep Faust's behaviour and remove work that nothing here uses; the figures given with
each were measured one change at a time on the bare agent. ``apply`` makes them, once per process,
before the app is built.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
import types
from typing import Callable

import faust
from faust.sensors.monitor import Monitor

log = logging.getLogger("mmsr.worker")


def apply(settings) -> None:
    streams_take_turns_every(settings.loop_turn_every)
    drain_producer_buffer_on_flush()
    deliver_each_message_without_four_tasks()
    fetch_with_short_holds(settings.fetch_wait_ms)
    producer_buffer_size_without_settings_reads()
    events_without_settings_reads()
    assign_once_the_metadata_lists_every_topic()
    crash_on_coordinator_errors()
    resume_stream_partitions_after_the_seek()
    rewind_partitions_without_a_committed_offset()


def assign_once_the_metadata_lists_every_topic() -> None:
    """The group leader assigns only once the cluster metadata lists every topic the group
    subscribes to, refreshing it meanwhile (``until_listed``).

    Faust creates its changelog topics at start and subscribes at once. When the metadata the
    leader assigns from did not list a new topic yet, Faust's assignor ignored it for the
    copartitioned groups and then raised KeyError on it among the global tables' standbys
    (``PartitionAssignor._global_table_standby_assignments``). Nothing logged the error and the
    worker never got an assignment; no line followed "Ignoring missing topic" (seen:
    ``test_a_broker_restart_mid_replay_...`` on a fresh broker under load, 300 s; reproduced by
    ``tests/integration/test_startup.py``); ``crash_on_coordinator_errors`` says why nothing
    logged it and nothing followed. Assigning without the topic is no
    way out either: a write to a global table whose changelog has no known partitions crashes the
    agent (PartitionsMismatch), and nothing refreshes the metadata for minutes.
    """
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    original = GroupCoordinator._perform_assignment
    if getattr(original, "waits_for_metadata", False):
        return

    async def perform_assignment(self, response):
        await until_listed(self)
        return await original(self, response)

    perform_assignment.waits_for_metadata = True
    perform_assignment.original = original
    GroupCoordinator._perform_assignment = perform_assignment


METADATA_WAIT_S = 15.0  # the longest a leader waits for its topics (the rebalance timeout is 60 s)


async def until_listed(coordinator) -> list[str]:
    """Refresh the coordinator's metadata until it lists every topic subscribed to, or until
    METADATA_WAIT_S; the topics still missing then (assigned without, as Faust does)."""
    subscription = coordinator._subscription.subscription
    topics = set(subscription.topics) if subscription is not None else set()

    def unlisted() -> list[str]:
        return sorted(t for t in topics if not coordinator._cluster.partitions_for_topic(t))

    started, missing = time.monotonic(), unlisted()
    if missing:
        log.warning("waiting for the cluster metadata to list %s before assigning partitions", missing)
    while missing and time.monotonic() - started < METADATA_WAIT_S:
        await coordinator._client.force_metadata_update()
        await asyncio.sleep(coordinator._retry_backoff_ms / 1000)
        if not (missing := unlisted()):
            log.info("the cluster metadata lists every subscribed topic after %.1f s", time.monotonic() - started)
    if missing:
        log.warning("topics still missing from the cluster metadata after %.0f s, assigning without them: %s",
                    METADATA_WAIT_S, missing)
    return missing


def crash_on_coordinator_errors() -> None:
    """An error that ends the consumer's part in its group stops the worker, logged, so that its
    supervisor restarts it, instead of leaving a live process that holds no partitions.

    aiokafka hands such errors (a failed assignment, a fatal JoinGroup or heartbeat error) to the
    application: its coordination task stores the error and waits until a ``getmany`` or
    ``getone`` call reads it (``GroupCoordinator._push_error_to_user``, ``check_errors``). Faust
    fetches through aiokafka's fetcher and never makes those calls, so the error was never read
    and never logged, and the coordination task waited on it for good: no assignment, no
    heartbeat, no rejoin. That was the silent hang of ``assign_once_the_metadata_lists_every_topic``
    (a KeyError in Faust's assignor), and any other such error would end the same way. The worker
    now crashes the consumer as Faust does on a failed commit; Faust stops and the process exits 1.
    """
    from aiokafka.consumer.group_coordinator import GroupCoordinator
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    push = getattr(GroupCoordinator._push_error_to_user, "original", GroupCoordinator._push_error_to_user)
    start = getattr(AIOKafkaConsumerThread.on_start, "original", AIOKafkaConsumerThread.on_start)

    async def push_error_to_user(self, exc):
        on_unread_error = getattr(self, "on_unread_error", None)
        if on_unread_error is not None:
            log.error("the consumer's group coordination failed: %r; stopping the worker (nothing else would "
                      "read this error, and the consumer would hold no partitions)", exc)
            on_unread_error(exc)
        return await push(self, exc)  # aiokafka's own handling: waits until read or closed

    async def on_start(self) -> None:
        await start(self)
        thread = self

        def crash(exc: BaseException) -> None:  # on the worker's loop, where Faust's services live
            asyncio.run_coroutine_threadsafe(thread.crash(exc), thread.parent_loop)

        self._consumer._coordinator.on_unread_error = crash

    push_error_to_user.original, on_start.original = push, start
    GroupCoordinator._push_error_to_user = push_error_to_user
    AIOKafkaConsumerThread.on_start = on_start


def resume_stream_partitions_after_the_seek() -> None:
    """At the end of a recovery, Faust fetches the stream partitions again only once it has
    sought them to their committed offsets and cleared its stream buffers, not before.

    Faust's ``Recovery.on_recovery_completed`` (and ``_resume_streams``) resumes the stream
    partitions, then awaits ``perform_seek`` (the committed offsets, fetched in the consumer's
    thread), then resumes the flow, and that resume clears every stream buffer (mode's
    ``FlowControlEvent.resume``: ``clear_on_resume``). Where a recovery ran, the fetcher was
    already draining, so records delivered during the seek went into the buffers and were
    cleared unread, while aiokafka's position had moved past them. A partition with a committed
    offset is sought back and reads them again. One without (a group's first start, or a worker
    killed before its first commit) is not sought (aiokafka seeks only to an offset above 0), so
    Faust never delivered them: seen as a kill -9 test's restarted worker stalling on a partition
    at offset 295 while aiokafka stood at the log's end, 495, with nothing buffered or unacked
    (the offset guard's report, ``streams.kafka.flow``), and the group's offsets topic showing no
    commit before the restart. The partitions Faust resumes during these two calls are now
    resumed when the call returns: after the seek, the buffer clear and the flow's resume.
    """
    from faust.tables.recovery import Recovery

    for name in ("on_recovery_completed", "_resume_streams"):
        original = getattr(Recovery, name)
        if getattr(original, "resumes_after_the_seek", False):
            continue
        setattr(Recovery, name, resuming_partitions_on_return(original))


def resuming_partitions_on_return(method):
    """``method`` with the consumer's ``resume_partitions`` calls held until it returns."""

    async def wrapper(self, *args, **kwargs):
        consumer = self.app.consumer
        held: list = []
        consumer.resume_partitions = held.append  # shadows the method on this instance
        try:
            return await method(self, *args, **kwargs)
        finally:
            del consumer.resume_partitions
            for tps in held:
                consumer.resume_partitions(tps)

    wrapper.resumes_after_the_seek = True
    functools.update_wrapper(wrapper, method)
    return wrapper


def rewind_partitions_without_a_committed_offset() -> None:
    """Faust's seek to the committed offsets also rewinds a stream partition whose committed
    offset is 0 or that has none, so that the records Faust cleared from its buffers are read again.

    Faust clears its stream buffers at every rebalance and at the end of every recovery, and
    counts on the seek to the committed offsets that follows to deliver the cleared records
    again. aiokafka's ``seek_to_committed`` seeks only to an offset above 0, so a partition
    with no commit yet (a group's first seconds, a worker killed before its first commit) or
    committed at 0 kept its position past the cleared records, and they were never delivered
    (``resume_stream_partitions_after_the_seek`` closes the window seen at the end of a
    recovery; this covers a rebalance too). Such a partition is now sought to 0, or with no
    commit reset by the consumer's reset policy where that policy is ``earliest`` (Faust's
    default): the records the worker had already applied come again and are dropped as taken by
    the offset guard. With ``latest`` nothing says where the cleared records began, so aiokafka's
    behaviour is kept. Changelog partitions are left to Faust's recovery, which positions them.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if getattr(AIOKafkaConsumerThread.seek_to_committed, "rewinds", False):
        return

    async def seek_to_committed(self):
        faust_consumer = self.consumer
        return await self.call_thread(seek_to_committed_or_reset, self._ensure_consumer(),
                                      faust_consumer._is_changelog_tp, faust_consumer.app.conf.consumer_auto_offset_reset)

    seek_to_committed.rewinds = True
    AIOKafkaConsumerThread.seek_to_committed = seek_to_committed


async def seek_to_committed_or_reset(client, is_changelog: Callable, reset_policy: str) -> dict:
    """aiokafka's ``seek_to_committed`` on every assigned partition, then the stream partitions
    it did not seek (committed at 0, or never) sought to 0 or reset by ``earliest``. Returns
    the committed offsets, as aiokafka's does."""
    committed = await client.seek_to_committed()
    streams = [tp for tp in committed if not is_changelog(tp)]
    for tp in streams:
        if committed[tp] == 0:
            client.seek(tp, 0)
    never = [tp for tp in streams if committed[tp] is None or committed[tp] < 0]
    if never and reset_policy == "earliest":
        await client.seek_to_beginning(*never)
    return committed


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
            await TURNS.sleep(0)
            return WaitResults([first], [finished.value], False)
        except BaseException:
            close_unstarted(other)
            raise
        return await original(self, asyncio.ensure_future(resumed(first, awaiting)), other)

    wait_first.eager = True
    consumer_class.wait_first = wait_first


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
    interactions instead of 6-7 (each rewriting some 1,100 records). ``quiet`` 0: Faust's own take."""
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


class Turns:
    """``asyncio.sleep`` for the per-message turns of Faust's stream iterator and consumer: a turn
    of the loop at every ``every``-th ``sleep(0)``, none at the others (other delays: asyncio's).

    Faust's stream iterator awaits ``sleep(0)`` before each message, and the consumer's drain loop
    (``deliver_each_message_without_four_tasks``) gives the streams a turn after each delivery: a
    pass of the event loop per message for each. Taking them every 8th message took a bare agent
    from 24.0 to 21.8 us per message (every 32nd: 20.8; ``bench/faust_floor.py``), and one worker
    folded 10,757 -> 11,609/s (every 32nd: 11,555; ``bench/ingest.py``, medians of 2 alternated
    rounds). Both sides skip alike, so the drain loop still puts about as many messages per pass
    as a stream takes (a turn every 16th delivery with the streams at every message filled their
    buffers: see ``deliver_each_message_without_four_tasks``)."""

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
    ``every`` messages (1: at each, as Faust does)."""
    TURNS.every = every
    try:
        from faust._cython import streams as cython_streams
    except ImportError:  # Faust without its compiled parts: its Python iterator takes asyncio's sleep itself
        return
    cython_streams.sleep = TURNS.sleep if every > 1 else asyncio.sleep
