"""Patches without which the worker would lose or repeat events: the producer-buffer flush, the
seek and resume at the end of a recovery, the rewind of partitions without a commit, the
metadata wait before an assignment, and coordinator errors nobody read.

Each replaces one method of faust-streaming or aiokafka (``streams.kafka.compat`` checks the
versions and the targets at start) and says what upstream does, where, and which test fails
without it.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Callable

log = logging.getLogger(__name__)


def assign_after_full_metadata() -> None:
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

    Replaces ``aiokafka.consumer.group_coordinator.GroupCoordinator._perform_assignment`` (wrapped;
    upstream assigns from whatever metadata it holds, and faust/assignor/partition_assignor.py
    ``_global_table_standby_assignments`` raises KeyError on a topic missing from it). Shown by
    ``tests/integration/test_startup.py::test_the_leader_waits_for_the_metadata_to_list_a_new_global_changelog_before_it_assigns``
    and
    ``tests/unit/test_patches.py::test_the_leader_refreshes_the_metadata_until_it_lists_every_topic``.
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
    heartbeat, no rejoin. That was the silent hang of ``assign_after_full_metadata``
    (a KeyError in Faust's assignor), and any other such error would end the same way. The worker
    now crashes the consumer as Faust does on a failed commit; Faust stops and the process exits 1.

    Replaces ``GroupCoordinator._push_error_to_user`` (aiokafka/consumer/group_coordinator.py: the error
    waits for a ``getmany`` call that Faust never makes) and
    ``faust.transport.drivers.aiokafka.AIOKafkaConsumerThread.on_start``. Shown by
    ``tests/integration/test_startup.py::test_a_coordination_error_stops_the_worker_with_the_error_logged_and_a_restart_serves``.
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


def resume_after_seek() -> None:
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

    Replaces ``faust.tables.recovery.Recovery.on_recovery_completed`` and ``Recovery._resume_streams``
    (wrapped; faust/tables/recovery.py resumes the stream partitions before its ``perform_seek``). Shown
    by
    ``tests/unit/test_patches.py::test_no_record_delivered_during_the_end_of_recovery_seek_is_cleared_unread``
    and the kill tests of ``tests/integration/test_recovery.py``.
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


def rewind_uncommitted_partitions() -> None:
    """Faust's seek to the committed offsets also rewinds a stream partition whose committed
    offset is 0 or that has none, so that the records Faust cleared from its buffers are read again.

    Faust clears its stream buffers at every rebalance and at the end of every recovery, and
    counts on the seek to the committed offsets that follows to deliver the cleared records
    again. aiokafka's ``seek_to_committed`` seeks only to an offset above 0, so a partition
    with no commit yet (a group's first seconds, a worker killed before its first commit) or
    committed at 0 kept its position past the cleared records, and they were never delivered
    (``resume_after_seek`` closes the window seen at the end of a
    recovery; this covers a rebalance too). Such a partition is now sought to 0, or with no
    commit reset by the consumer's reset policy where that policy is ``earliest`` (Faust's
    default): the records the worker had already applied come again and are dropped as taken by
    the offset guard. With ``latest`` nothing says where the cleared records began, so aiokafka's
    behaviour is kept. Changelog partitions are left to Faust's recovery, which positions them.

    Replaces ``AIOKafkaConsumerThread.seek_to_committed`` (faust/transport/drivers/aiokafka.py, which
    calls aiokafka's ``AIOKafkaConsumer.seek_to_committed``: aiokafka/consumer/consumer.py seeks only
    partitions committed above 0). Shown by ``tests/integration/test_seek.py``.
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

    Replaces ``faust.transport.producer.ProducerBuffer.flush`` (faust/transport/producer.py: ``flush``
    calls ``flush_atmost``, which returns after 0.1 s without a send). Shown by
    ``tests/unit/test_producer_flush.py::test_faust_flush_gives_up_with_records_unsent_and_the_patched_one_drains``
    and ``tests/integration/test_scale_out.py``.
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
