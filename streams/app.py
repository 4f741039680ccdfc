"""The Faust wiring: topics, tables, agents and timers over the stages (``streams.stages``).

Built by a factory (``build_worker``) rather than at import time so tests and tools can run
several apps with their own topic names and state directories. Processing guarantee:
at-least-once from Kafka, effectively-once for state (``UserState.already_applied``); Faust
flushes the producer (changelogs, dead letters, lists) before it commits offsets.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import time

import faust

from streams.events import key_text
from streams.kafka import patches
from streams.kafka.patches.batching import take_events_until_quiet
from streams.kafka.patches.throughput import QuietMonitor, RawBytes
from streams.kafka.continuity import OffsetGuard, PartitionReader, faust_acknowledger
from streams.kafka.flow import label, partition_report
from streams.kafka.security import client_config, faust_credentials
from streams.metrics import Metrics
from streams.hosting import Models
from streams.services import Publisher, Services, scan_user_state
from streams.threads import read_concurrently
from streams.settings import TOPICS, Settings
from streams.stages.interactions import InteractionsStage, SummaryResultsStage
from streams.stages.items import CaptionResultsStage, CaptionsStage, ItemsStage
from streams.stages.llm import RerankRequestsStage, SummaryRequestsStage
from streams.stages.neighbours import NeighboursStage
from streams.stages.recommendations import RecommendationsStage

log = logging.getLogger(__name__)


class Worker:
    """One Faust app with its topics, tables, agents, timers and web views."""

    def __init__(self, settings: Settings, embedder=None):
        self.settings = s = settings
        metrics = Metrics()
        s.state_dir.mkdir(parents=True, exist_ok=True)
        self.app = app = faust.App(
            s.group_id, broker=[f"kafka://{b.strip()}" for b in s.bootstrap_servers.split(",")], store="rocksdb://",
            datadir=str(s.state_dir), web_bind=s.web_host, web_host=s.advertised_web_host, web_port=s.web_port,
            topic_partitions=s.user_partitions, topic_replication_factor=s.replication_factor,
            processing_guarantee="at_least_once", producer_max_request_size=32 * 1024 * 1024,
            producer_linger=s.producer_linger, producer_max_batch_size=s.producer_batch_bytes,
            consumer_max_fetch_size=8 * 1024 * 1024, broker_max_poll_records=s.poll_records, broker_commit_interval=1.0,
            broker_session_timeout=s.session_timeout, broker_heartbeat_interval=min(3.0, s.session_timeout / 3),
            table_standby_replicas=s.standby_replicas, autodiscover=False, broker_credentials=faust_credentials(s),
            monitor=QuietMonitor(),
        )
        self.topics = {name: app.topic(getattr(s, f"topic_{name}"), schema=RawBytes())
                       for name in TOPICS}
        if s.role == "llm":  # no tables: every request carries what its answer needs
            user_state, item_profiles, neighbours = {}, {}, {}
        else:
            user_state = app.Table("user-state", default=None, partitions=s.user_partitions, key_type=str)
            global_table = dict(default=None, partitions=s.item_partitions, key_type=str)
            item_profiles = app.GlobalTable("item-profiles", on_changelog_event=self.on_item_changelog, **global_table)
            neighbours = app.GlobalTable("item-neighbours", on_changelog_event=self.on_neighbours_changelog,
                                         **global_table)
        self.services = Services(s, user_state, item_profiles, Publisher(s, metrics, self.topics), metrics,
                                 Models(s, metrics, embedder))
        self.services.neighbours = neighbours
        self.items = ItemsStage(self.services)
        self.captions = CaptionsStage(self.services)
        self.interactions = InteractionsStage(self.services)
        self.recommendations = RecommendationsStage(self.services)
        self.neighbours = NeighboursStage(self.services)
        self.caption_results = CaptionResultsStage(self.captions)
        self.summary_results = SummaryResultsStage(self.interactions)
        self.summary_requests = SummaryRequestsStage(self.services)
        self.rerank_requests = RerankRequestsStage(self.services)
        self.assigned: set[int] = set()
        self.guards: list[OffsetGuard] = []
        self.generation = 0  # of the assignment: a restore begun for an older one is discarded
        self.restoring: asyncio.Task | None = None
        if s.role != "llm":
            self._register_state()
        if s.role != "state":
            self._register_generation()
        from streams.web import register_views

        register_views(app, self.services, self.consumer_lag, state=s.role != "llm")

    async def on_item_changelog(self, event) -> None:
        """Every worker's index follows the item table, other workers' writes included, item by item."""
        self.services.catalog.apply_profile(*changelog_entry(event))

    async def on_neighbours_changelog(self, event) -> None:
        """Every worker's counts and trending follow the item-keyed aggregates, item by item."""
        self.services.item_stats.apply(*changelog_entry(event))

    def guard(self, topic: str, table, holds_for: float) -> OffsetGuard:
        """The offset guard of one input topic whose stage keeps its state in ``table`` and gathers
        batches for up to ``holds_for`` seconds (``streams.kafka.continuity``: no offset is lost or
        applied twice across rebalances)."""
        app, services = self.app, self.services

        def assigned() -> set[int]:
            return {tp.partition for tp in app.consumer.assignment() if tp.topic == topic}

        guard = OffsetGuard(topic, table, PartitionReader(topic, self.settings.group_id, client_config(self.settings)),
                            functools.partial(services.off_loop, pool="broker"), services.metrics, assigned=assigned,
                            acknowledge=faust_acknowledger(app),
                            diagnose=lambda partition: partition_report(app, topic, partition), holds_for=holds_for)
        self.guards.append(guard)
        return guard

    def start_restore(self) -> None:
        """A restore for the current assignment, replacing any still running for an older one. The
        task is kept and watched: a failure stops the worker (non-zero exit) with the error logged,
        where it used to leave every agent waiting on ``restored`` while /health said "starting"."""
        self.generation += 1
        if self.restoring is not None and not self.restoring.done():
            self.restoring.cancel()
        self.restoring = asyncio.ensure_future(self.restore(self.generation))
        self.restoring.add_done_callback(functools.partial(self.restore_finished, self.generation))

    def restore_finished(self, generation: int, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        if generation != self.generation:  # its partitions changed under it: the newer restore decides
            log.warning("a restore for an earlier assignment failed after a rebalance (%r); its result was not "
                        "needed", exc)
            return
        log.critical("restoring partitions %s failed; stopping the worker: %r", sorted(self.assigned), exc,
                     exc_info=exc)
        asyncio.ensure_future(self.app.crash(exc))

    async def restore(self, generation: int) -> None:
        """After a start or a rebalance: the catalog index and what user state owes, rebuilt off the loop.
        ``generation``: the assignment it is for; if the partitions changed meanwhile, its result is
        stale (another restore is under way) and is dropped rather than overwrite the newer one."""
        services = self.services
        if not services.catalog.ready:
            await services.catalog.rebuild(services.models.embedder.dim, services.item_profiles.items)
            records = await services.off_loop(read_concurrently, lambda: list(services.neighbours.items()),
                                              pool="scans")
            for key, record in records:
                services.item_stats.apply(key_text(key), record)
            await services.off_loop(services.item_stats.trending.rank, pool="scans")
        owed, backfill = await services.off_loop(scan_user_state, services.user_state, set(self.assigned),
                                                 pool="scans")
        if generation != self.generation:
            log.info("a restore for an earlier assignment finished after a rebalance; its result is dropped")
            return
        services.backfill_pending = backfill
        for user_id in owed:
            services.due.schedule(user_id, 0.0)
        services.restored.set()
        log.info("restored (partitions %s): %d lists owed, %d users owed one at a backfill end", sorted(self.assigned), len(owed),
                 sum(map(len, backfill.values())))

    def _register_generation(self) -> None:
        """Captions, summaries and re-ranking: in-process (role all) or from the request topics (role llm)."""
        app, s, services = self.app, self.settings, self.services

        @app.agent(self.topics["caption_requests"], name="captions")
        async def captions_agent(stream):
            async for events in stream.take_events(s.caption_batch, within=s.embed_within):
                await (self.captions.publish(events) if s.role == "llm" else self.captions.process(events))

        if s.role == "llm":
            if s.summaries_on:
                @app.agent(self.topics["summary_requests"], name="summary-requests")
                async def summary_requests_agent(stream):
                    async for events in stream.take_events(s.summary_batch, within=s.interaction_within):
                        await self.summary_requests.process(events)

            if s.reranking_on:
                @app.agent(self.topics["rerank_requests"], name="rerank-requests")
                async def rerank_requests_agent(stream):
                    async for events in stream.take_events(s.rerank_users, within=s.interaction_within):
                        await self.rerank_requests.process(events)

            @app.on_rebalance_complete.connect
            async def on_assigned(sender, **kwargs):
                services.restored.set()  # nothing to restore: healthy once assigned

        if s.reranking_on and s.recommender_adapter:
            @app.timer(interval=s.adapter_poll_seconds)
            async def adapter_watch():
                await services.off_loop(services.models.check_adapter)

    def _register_state(self) -> None:
        """Events, user state, item aggregates and candidate lists (roles all and state)."""
        app, s, services = self.app, self.settings, self.services

        if s.role == "state" and s.captions_on:
            @app.agent(self.topics["captions"], name="caption-results")
            async def caption_results_agent(stream):
                async for events in stream.take_events(s.embed_batch, within=s.embed_within):
                    await self.caption_results.process(events)

        if s.role == "state" and s.summaries_on:
            @app.agent(self.topics["user_summaries"], name="summary-results")
            async def summary_results_agent(stream):
                async for events in stream.take_events(s.interaction_batch, within=s.interaction_within):
                    await services.restored.wait()
                    await self.summary_results.process(events)

        items_guard = self.guard(s.topic_items, services.item_profiles, s.embed_within)

        @app.agent(self.topics["items"], name="items")
        async def items_agent(stream):
            async for events in stream.take_events(s.embed_batch, within=items_guard.holds_for):
                await items_guard.feed(self.items.process, events)

        pairs_guard = self.guard(s.topic_item_pairs, services.neighbours, s.increments_within)

        def feeding() -> bool:
            """This worker's interactions stage, which sends most of its item pairs, applied a batch
            within the quiet time: more pairs are on their way, so the batch is not cut early."""
            return time.monotonic() - self.interactions.last_batch_at < s.increments_quiet

        @app.agent(self.topics["item_pairs"], name="neighbours")
        async def neighbours_agent(stream):
            async for events in take_events_until_quiet(
                    stream, s.increments_batch, pairs_guard.holds_for, s.increments_quiet, upstream_busy=feeding):
                await pairs_guard.feed(self.neighbours.process, events)

        interactions_guard = self.guard(s.topic_interactions, services.user_state.table, s.interaction_within)

        @app.agent(self.topics["interactions"], name="interactions")
        async def interactions_agent(stream):
            async for events in stream.take_events(s.interaction_batch, within=interactions_guard.holds_for):
                await services.restored.wait()
                await interactions_guard.feed(self.interactions.process, events)

        @app.timer(interval=1.0)
        async def catch_up_idle_partitions():
            if services.restored.is_set():
                await items_guard.catch_up(self.items.process)
                await pairs_guard.catch_up(self.neighbours.process)
                await interactions_guard.catch_up(self.interactions.process)

        @app.on_partitions_revoked.connect
        async def on_revoked(sender, revoked, **kwargs):
            self.generation += 1  # a restore still running is for partitions this worker may no longer have
            for guard in self.guards:
                guard.reset()
            self.neighbours.forget()
            services.publisher.forget_partitions({tp.partition for tp in revoked if tp.topic == s.topic_interactions})
            services.restored.clear()  # in-memory schedules are dropped and derived again on assignment
            services.due.clear()
            services.backfill_pending = {}

        @app.on_rebalance_complete.connect
        async def on_assigned(sender, **kwargs):
            self.assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == s.topic_interactions}
            self.start_restore()

        @app.timer(interval=s.emit_interval)
        async def emitter():
            if services.restored.is_set():
                await self.recommendations.emit_due(self.assigned)

        @app.timer(interval=0.1)
        async def apply_global_tables():
            """Apply other workers' global-table records now. Faust files every partition of a global
            table as active, and applies active changelog records in buffers of 1,000 that it
            flushes only while recovering: after start-up another worker's items and counts would
            arrive 1,000 at a time, or never at low traffic. (recovery_buffer_size=1 instead makes
            Faust resume this worker's own partitions too, and their records, read back late,
            overwrite newer local writes.)"""
            if not app.tables.recovery.in_recovery:
                app.tables.recovery.flush_buffers()

        @app.timer(interval=s.popularity_refresh_seconds)
        async def rank_trending():
            await services.off_loop(services.item_stats.trending.rank, pool="scans")

        if s.retrieval_model != "none":
            @app.timer(interval=s.retrieval_poll_seconds)
            async def sequential_watch():
                await services.off_loop(services.models.check_sequential)

        if s.index_resync_seconds > 0:
            @app.timer(interval=s.index_resync_seconds)
            async def resync():
                await services.catalog.rebuild(services.models.embedder.dim, services.item_profiles.items)

    async def consumer_lag(self) -> dict[str, int]:
        """Per input partition: the high watermark minus the next offset this worker will read."""
        consumer = self.app.consumer
        lags = {}
        for tp in consumer.assignment():
            if tp.topic not in (self.settings.topic_interactions, self.settings.topic_items):
                continue
            high = consumer.highwater(tp)
            done = self.services.metrics.last_offsets.get((tp.topic, tp.partition), -1)
            if high is not None:
                lags[label(tp)] = max(int(high) - (done + 1), 0)
        return lags


def changelog_entry(event) -> tuple[str, dict | None]:
    """(key, value) of a table's changelog message as Faust wrote them (JSON; None: deleted)."""
    message = event.message
    value = None if message.value is None else json.loads(message.value)
    try:
        key = json.loads(message.key)
    except ValueError:
        key = key_text(message.key)
    return str(key), value


def build_worker(settings: Settings, embedder=None) -> Worker:
    patches.apply(settings)
    return Worker(settings, embedder=embedder)
