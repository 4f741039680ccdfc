"""Interactions stage: user state, recurrent summaries, and the lists each event makes owed.

Effectively-once: each user records the offset of the last interaction it applied, and a
redelivered one is skipped. A user's state, summary, pending block, offsets and owed list are
one record, written once per user per batch after the summary events are acknowledged.
"""
from __future__ import annotations

import asyncio
import logging
import time

import schemas
from models.llm import pipeline
from models.candidates.cooccurrence import encode_pairs_message, interaction_records, pair_window, pairs_message
from schemas import BACKFILL_END, CONTROL_HEADER
from streams.events import Trigger, accept, header, is_recent, utcnow
from streams.services import Services, isolate
from streams.state import UserState

log = logging.getLogger(__name__)

OWED_CHUNK = 500  # users marked per loop turn at a backfill's end (the loop stays responsive)
# item-pairs messages stay below the broker's default 1 MB record limit: a record carries up to
# W weighted pairs (ML-100K, window 20: 503 bytes on average, 1,064 at most)
PAIR_RECORDS_PER_MESSAGE = 800


class InteractionsStage:
    def __init__(self, services: Services):
        self.services = services
        self.last_batch_at = 0.0  # time.monotonic() at the end of the last batch: the neighbours stage's cue
        self.cooccurrence = services.settings.cooccurrence_config()

    @property
    def summarizing(self) -> bool:
        """Summaries are written here (role all)."""
        return self.services.models.summarizer is not None

    @property
    def requesting(self) -> bool:
        """Summaries are asked of the llm role (role state)."""
        return self.services.settings.role == "state" and self.services.settings.summaries_on

    async def process(self, events) -> None:
        """One batch, in order: valid events grouped per user (one state read and one write per
        user), dead letters sent as met, and a backfill-end marker applied only after every event
        before it in the batch."""
        by_user: dict[str, list] = {}
        for event in events:
            message = event.message
            self.services.metrics.observe_offset(message.topic, message.partition, message.offset)
            if header(message, CONTROL_HEADER) == BACKFILL_END:
                await self.apply_user_groups(by_user)
                by_user = {}
                await self.finish_backfill(event)
                continue
            try:
                interaction = accept(message, "interaction", "user_id")
            except schemas.InvalidEvent as error:
                await self.services.publisher.dead_letter(message, error.kind, str(error))
                continue
            by_user.setdefault(interaction["user_id"], []).append((event, interaction))
        await self.apply_user_groups(by_user)
        self.last_batch_at = time.monotonic()

    def apply_group(self, state: UserState, group: list, pending_cap: int, pairs: list[list]) -> Trigger | None:
        """Apply one user's events of a batch, adding what their item-keyed increments are derived
        from to ``pairs``; the trigger of the newest recent one, if any."""
        settings, metrics = self.services.settings, self.services.metrics
        catalog = self.services.catalog.known()
        trigger = None
        applied = 0
        for event, interaction in group:
            message = event.message
            if state.already_applied(message.partition, message.offset):
                # still rewritten by the caller, so a changelog record lost in a crash is sent again
                metrics.inc("duplicates_skipped_total")
                continue
            previous = state.recent_items(self.cooccurrence.window)
            state.apply(interaction, message.partition, message.offset, tail=settings.history_tail,
                        seen_cap=settings.seen_cap, pending_cap=pending_cap)
            ts = schemas.parse_time(interaction["event_time"]).timestamp()
            if interaction["item_id"] in catalog:
                self.add_pairs(pairs, [i for i in previous if i in catalog], ts, interaction, message)
            else:
                state.unknown_items += 1
                metrics.inc("unknown_items_total")
            if is_recent(ts, settings.freshness_seconds):
                trigger = Trigger(message.topic, message.partition, message.offset,
                                  interaction["event_time"], "interaction", message.timestamp)
            else:
                state.backfill_pending = True
                self.services.backfill_pending.setdefault(message.partition, set()).add(state.user_id)
                metrics.inc("stale_events_total")
            applied += 1
        if applied:
            metrics.inc("events_applied_total", applied)
        return trigger

    async def apply_user_groups(self, by_user: dict[str, list]) -> None:
        """Apply each user's events, run the summarizer over every block they completed, then
        write each user's state once: state, summary, offsets and owed list change together."""
        if not by_user:
            return
        settings = self.services.settings
        async with self.services.user_writes:  # read, awaits (summaries, acks), write: no other write between
            pending_cap = 100 * settings.summary_block if self.summarizing or self.requesting else settings.summary_block
            states: dict[str, UserState] = {}
            triggers: dict[str, Trigger] = {}
            pairs: list[list] = []
            for user_id, group in by_user.items():
                # the user's partition: its RocksDB store and changelog
                state = UserState.from_dict(self.services.user_state.of(group[-1][0]).get(user_id), user_id)
                trigger = self.apply_group(state, group, pending_cap, pairs)
                if trigger is not None:
                    triggers[user_id] = trigger
                states[user_id] = state
            arrivals = {(e.message.partition, e.message.offset): e.message.timestamp
                        for group in by_user.values() for e, _ in group}
            summary_events = await self.summarize(states, arrivals) if self.summarizing else []
            # the summary events must be on the broker before the state that records them: if the
            # changelog write landed first and the worker died, the redelivered interactions would be
            # skipped as applied and the events never sent
            # the same holds for the item-keyed increments: on the broker before the offsets they carry
            # are recorded as applied, so a crash in between sends them again (and the items skip them)
            requests = [r for r in map(self.summary_request, states.values()) if r] if self.requesting else []
            pending = [await self.services.publisher.send("user_summaries", e["user_id"], e) for e in summary_events]
            pending += [await self.services.publisher.send("summary_requests", r["user_id"], r) for r in requests]
            pending += await self.send_pairs(pairs)
            if pending:
                await asyncio.gather(*pending)
            # with the re-ranker on, a user whose summary moved gets a list at once, re-ranked with it
            summarized = {e["user_id"] for e in summary_events} if self.services.models.reranker is not None else set()
            for user_id, trigger in triggers.items():
                if user_id in summarized:
                    trigger = Trigger(trigger.topic, trigger.partition, trigger.offset, trigger.event_time, "summary",
                                      trigger.broker_timestamp)
                states[user_id].owed = trigger.to_state()
                self.services.metrics.inc("lists_owed_total", reason=trigger.kind)
            for user_id, state in states.items():
                self.services.user_state.of(by_user[user_id][-1][0])[user_id] = state.to_dict()
            for user_id in triggers:
                self.services.due.schedule(user_id, 0.0 if user_id in summarized else settings.debounce_seconds)

    def add_pairs(self, pairs: list[list], previous: list[str], ts: float, interaction: dict, message) -> None:
        """The interaction as the neighbours stage derives its increments from (``interaction_records``):
        its source position, time (epoch seconds), item and the user's previous catalog items
        (``previous``, oldest first) it pairs with."""
        pairs.append([message.partition, message.offset, ts, interaction["item_id"], pair_window(previous, self.cooccurrence)])

    async def send_pairs(self, pairs: list[list]) -> list:
        """The batch's interactions to the item partitions their increments go to, a few messages
        per batch: each names the interaction once, with the weighted pairs of that partition's
        items (``interaction_records``), and the neighbours stage folds them.

        A message per item, carrying one object per increment, cost more than everything else the
        worker did: the increments were built, serialized and parsed as ~20 small objects per
        interaction, and every item of a batch was a Kafka record. Each item's increments still
        arrive in one partition (the one its id hashes to, as a keyed message would go) and in
        source order (the records are sorted by source partition and offset), which the
        neighbours stage's skip of redelivered increments relies on."""
        partitions = self.services.settings.item_partitions
        by_partition: dict[int, list[list]] = {}
        increments = 0
        for source, offset, ts, item, window in sorted(pairs, key=lambda r: (r[0], r[1])):
            records, n = interaction_records(source, offset, ts, item, window, partitions)
            increments += n
            for partition, record in records.items():
                by_partition.setdefault(partition, []).append(record)
        futures = []
        for partition, records in sorted(by_partition.items()):
            for start in range(0, len(records), PAIR_RECORDS_PER_MESSAGE):
                chunk = records[start:start + PAIR_RECORDS_PER_MESSAGE]
                message = (encode_pairs_message(chunk, self.cooccurrence) if self.services.settings.pairs_format == "binary"
                           else pairs_message(chunk, self.cooccurrence))
                futures.append(await self.services.publisher.send("item_pairs", f"pairs-{partition}", message,
                                                           partition=partition))
        self.services.metrics.inc("pair_entries_total", increments)
        self.services.metrics.inc("pair_messages_total", len(futures))
        return futures

    def block_texts(self, block: list[dict]) -> list[str]:
        """A block as the summarizer reads it (``models.llm.pipeline``, as in training and evaluation)."""
        records = []
        for entry in block:
            profile = self.services.item_profiles.get(entry["item_id"])
            if not profile:
                self.services.metrics.inc("summary_unknown_items_total")
            records.append((entry["item_id"], profile))
        return pipeline.summary_inputs(records)

    def summary_request(self, state: UserState) -> dict | None:
        """Role state: the user's full blocks for the llm role, unless a request for them is out.

        One request per user at a time, since each block's summary needs the one before; it
        carries everything the llm role needs (no state there). Unanswered (the llm role down,
        or its model failed) it is sent again after MMSR_SUMMARY_REQUEST_TIMEOUT.
        """
        settings = self.services.settings
        blocks = state.full_blocks(settings.summary_block)
        if not blocks:
            return None
        now = time.time()
        if state.summary_requested > state.summary_version and now - state.summary_requested_at < settings.summary_request_timeout:
            return None
        state.summary_requested, state.summary_requested_at = state.summary_version + len(blocks), now
        self.services.metrics.inc("summary_requests_total")
        return {"user_id": state.user_id, "partition": state.partition, "base_version": state.summary_version,
                "summary": state.summary, "covered": state.interaction_count - len(state.pending_block),
                "blocks": [{"entries": block_entries(block), "texts": self.block_texts(block)} for block in blocks]}

    async def summarize(self, states: dict[str, UserState], arrivals: dict[tuple[int, int], float | None]) -> list[dict]:
        """Every full pending block, recurrently, batched across users; one summary event per block.

        A failing input is isolated by splitting the batch: the other users' summaries go ahead,
        the failing user's blocks stay pending (retried with their next interaction) and the
        failure is counted. The interactions themselves are applied either way.
        """
        settings = self.services.settings
        blocks = {u: st.full_blocks(settings.summary_block) for u, st in states.items()}
        users = [u for u, b in blocks.items() if b]
        if not users:
            return []
        inputs = [([t for block in blocks[u] for t in self.block_texts(block)], states[u].summary) for u in users]
        results, failures = await summarize_isolated(self.services, inputs)
        events = []
        for n, (user_id, summaries) in enumerate(zip(users, results)):
            if n in failures:
                continue
            state = states[user_id]
            for block, summary in zip(blocks[user_id], summaries):
                state.record_summary(summary, settings.summary_block)
                self.services.metrics.inc("summaries_total")
                events.append(summary_event(settings, user_id, state.partition, state.summary_version, summary,
                                            block_entries(block),
                                            state.interaction_count - len(state.pending_block),
                                            arrivals.get((state.partition, block[-1]["offset"]))))
        return events

    async def finish_backfill(self, event) -> None:
        """A replay's end marker for one partition: each user its backfill touched is owed one list.

        The users come from an in-memory set per partition (derived from state after a restart),
        not from a table scan; they are marked a chunk per loop turn, and the mark is in their
        state, so a crash after the marker's offset is committed still owes them the list.
        """
        await self.services.restored.wait()
        message = event.message
        trigger = Trigger(message.topic, message.partition, message.offset, None, "backfill-end", message.timestamp)
        users = sorted(self.services.backfill_pending.pop(message.partition, set()))
        user_state = self.services.user_state.of(event)
        for start in range(0, len(users), OWED_CHUNK):
            for user_id in users[start:start + OWED_CHUNK]:
                data = user_state.get(user_id)
                if not data:
                    continue
                state = UserState.from_dict(data, user_id)
                state.backfill_pending = False
                state.owed = state.owed or trigger.to_state()  # a list owed by a fresh event serves both
                user_state[user_id] = state.to_dict()
                self.services.due.schedule(user_id, 0.0)
            await asyncio.sleep(0)
        self.services.metrics.inc("lists_owed_total", len(users), reason="backfill-end")
        self.services.metrics.inc("backfill_markers_total")
        log.info("backfill end on partition %d: %d users owed a list", message.partition, len(users))


def block_entries(block: list[dict]) -> list[dict]:
    return [{"item_id": e["item_id"], "event_time": e["event_time"], "offset": e["offset"]} for e in block]


def summary_event(settings, user_id: str, partition: int, version: int, summary: str, entries: list[dict],
                  interaction_count: int, arrival: float | None) -> dict:
    """A ``user-summaries`` event: the same record whichever role wrote the summary."""
    last = entries[-1]
    return {
        "trigger": {"topic": settings.topic_interactions, "partition": partition, "offset": last["offset"],
                    "event_time": last["event_time"], "timestamp": arrival},
        "user_id": user_id, "summary": summary, "summary_version": version, "interaction_count": interaction_count,
        "block": entries, "partition": partition, "model": settings.summary_model, "generated_at": utcnow(),
    }


async def summarize_isolated(services: Services, inputs: list[tuple[list[str], str | None]]):
    """The summarizer over (item texts of every full block, previous summary) per user, off the
    loop, a failing input isolated (``isolate``); time and failures counted. (results, failures)"""
    def summarize(batch):
        return services.models.summarizer.recurrent(
            [texts for texts, _ in batch], [prev for _, prev in batch],
            on_step=lambda n: services.metrics.inc("summaries_generated_total", n))

    started = time.perf_counter()
    results, failures = await isolate(services, summarize, inputs)
    services.metrics.inc("summary_seconds_total", time.perf_counter() - started)
    if failures:
        services.metrics.inc("summary_failures_total", len(failures))
    return results, failures


class SummaryResultsStage:
    """Role state: summaries from the llm role, applied only in version order.

    A summary is applied when its version follows the stored one and its block is the user's
    oldest pending block; a redelivered or late one (version at or below the stored) is skipped,
    so a user's summary never moves backwards. A mismatch (the block was dropped meanwhile by the
    pending cap) clears the outstanding request, so the next interaction asks again.
    """

    def __init__(self, interactions: InteractionsStage):
        self.interactions, self.services = interactions, interactions.services

    async def process(self, events) -> None:
        settings, metrics = self.services.settings, self.services.metrics
        for event in events:
            message = event.message
            try:
                summary = accept(message, "user_summary", "user_id")
            except schemas.InvalidEvent as error:
                await self.services.publisher.dead_letter(message, error.kind, str(error))
                continue
            async with self.services.user_writes:  # read, the request's ack, write: no interaction written between
                user_id, user_state = summary["user_id"], self.services.user_state.of(event)
                state = UserState.from_dict(user_state.get(user_id), user_id)
                oldest = state.full_blocks(settings.summary_block)[:1]
                if summary["summary_version"] <= state.summary_version:
                    metrics.inc("summaries_skipped_total", reason="not newer")
                    continue
                if (summary["summary_version"] != state.summary_version + 1 or not oldest
                        or [e["offset"] for e in oldest[0]] != [e["offset"] for e in summary["block"]]):
                    metrics.inc("summaries_skipped_total", reason="not the next block")
                    state.summary_requested = state.summary_version
                else:
                    state.record_summary(summary["summary"], settings.summary_block)
                    metrics.inc("summaries_total")
                    if settings.reranking_on:  # the new summary re-ranks the user's list
                        state.owed = Trigger(message.topic, message.partition, message.offset,
                                             summary["block"][-1]["event_time"], "summary", message.timestamp).to_state()
                        metrics.inc("lists_owed_total", reason="summary")
                request = self.interactions.summary_request(state)
                if request:  # on the broker before the state that records it was sent
                    await (await self.services.publisher.send("summary_requests", user_id, request))
                user_state[user_id] = state.to_dict()
                if state.owed and settings.reranking_on:
                    self.services.due.schedule(user_id, 0.0)
