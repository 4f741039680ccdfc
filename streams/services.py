"""What the stages stand on: models (``streams.hosting``), the catalog (``streams.catalog``),
publishing, the lists owed and the threads (``streams.threads``).

Stages (``streams.stages``) take a ``Services`` and never each other or the Faust app, so each
can be driven in a test with plain mappings for tables and a recording publisher.
"""
from __future__ import annotations

import asyncio
import heapq
import json
import logging
import time
from collections import OrderedDict
from typing import MutableMapping

import orjson

from streams.catalog import Catalog, ItemStats
from streams.events import dead_letter_record, key_text
from streams.hosting import MODEL_ERRORS, Models
from streams.metrics import Metrics
from streams.settings import Settings
from streams.tables import PartitionedTable
from streams.threads import read_concurrently, thread_pools

log = logging.getLogger(__name__)


class Publisher:
    """Everything the worker sends: lists, summary events, caption requests, dead letters."""

    def __init__(self, settings: Settings, metrics: Metrics, topics: dict):
        self.settings, self.metrics, self.topics = settings, metrics, topics
        self.last_recommendations: OrderedDict[str, dict] = OrderedDict()

    async def dead_letter(self, message, error_class: str, error_message: str) -> None:
        record = dead_letter_record(message, error_class, error_message)
        await self.topics["dead_letters"].send(key=message.key, value=json.dumps(record).encode())
        self.metrics.inc("dead_letters_total", reason=error_class, topic=message.topic)
        log.warning("dead-lettered %s[%d]@%d: %s: %s", message.topic, message.partition, message.offset,
                    error_class, error_message)

    async def send(self, topic: str, key: str, value: dict | bytes, partition: int | None = None):
        """Queue one JSON event, or a value already encoded (to the key's partition unless one is
        named); the returned future resolves when the broker acknowledges it."""
        body = value if isinstance(value, bytes) else orjson.dumps(value)
        return await self.topics[topic].send(key=key.encode(), value=body, partition=partition)

    async def recommendations(self, recs: list[dict]) -> None:
        """Publish lists and return once the broker has acknowledged every one of them."""
        acks = [await self.send("recommendations", rec["user_id"], rec) for rec in recs]
        await asyncio.gather(*acks)
        for rec in recs:
            user_id = rec["user_id"]
            self.last_recommendations[user_id] = rec
            self.last_recommendations.move_to_end(user_id)
            self.metrics.inc("recommendations_emitted_total", strategy=rec["strategy"])
            if rec["latency_ms"] is not None and rec["trigger"]["kind"] in ("interaction", "summary"):
                self.metrics.observe_latency(rec["latency_ms"] / 1000)
        while len(self.last_recommendations) > self.settings.last_lists_kept:
            self.last_recommendations.popitem(last=False)

    def forget_partitions(self, partitions: set[int]) -> None:
        """Revoked partitions' users are answered by their new owner: their last lists here go stale."""
        stale = [user for user, rec in self.last_recommendations.items() if rec["trigger"]["partition"] in partitions]
        for user in stale:
            del self.last_recommendations[user]


class DueLists:
    """When each owed list is due, in memory; what is owed lives in user state (``UserState.owed``),
    and this schedule is rebuilt from it after a restart or a rebalance.

    Each event pushes its user's deadline back by the debounce, but never past ``max_wait`` after
    the first event the list is owed for: a user active more often than the debounce still gets a
    list. Deadlines sit in a heap (stale entries are skipped), so a turn costs the lists it emits,
    not the users waiting; ``per_turn`` bounds a turn so one burst cannot hold the loop.
    """

    def __init__(self, max_wait: float = float("inf"), per_turn: int | None = None):
        self.max_wait, self.per_turn = max_wait, per_turn
        self._due: dict[str, float] = {}
        self._first: dict[str, float] = {}  # when the list now owed was first scheduled
        self._heap: list[tuple[float, str]] = []

    def schedule(self, user_id: str, delay: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        first = self._first.setdefault(user_id, now)
        due = min(now + delay, first + self.max_wait)
        if delay == 0:
            due = min(due, self._due.get(user_id, due))
        if self._due.get(user_id) != due:
            self._due[user_id] = due
            heapq.heappush(self._heap, (due, user_id))
            if len(self._heap) > 2 * len(self._due) + 64:  # mostly superseded entries: rebuild
                self._heap = [(d, u) for u, d in self._due.items()]
                heapq.heapify(self._heap)

    def pop_due(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        due: list[str] = []
        while self._heap and self._heap[0][0] <= now and (self.per_turn is None or len(due) < self.per_turn):
            deadline, user_id = heapq.heappop(self._heap)
            if self._due.get(user_id) == deadline:  # else superseded by a later schedule
                del self._due[user_id], self._first[user_id]
                due.append(user_id)
        return due

    def clear(self) -> None:
        self._due.clear()
        self._first.clear()
        self._heap.clear()

    def __len__(self) -> int:
        return len(self._due)


class Readiness(asyncio.Event):
    """Set once the schedule and the backfill sets have been derived from state; remembers since
    when it has not been, so /health can say how long a worker has been starting."""

    def __init__(self):
        super().__init__()
        self.unready_since = time.monotonic()

    def clear(self) -> None:
        if self.is_set():
            self.unready_since = time.monotonic()
        super().clear()

    def starting_seconds(self) -> float | None:
        return None if self.is_set() else time.monotonic() - self.unready_since


class Services:
    """The worker's shared parts; tables are any mutable mappings (Faust tables in the worker)."""

    def __init__(self, settings: Settings, user_state: MutableMapping, item_profiles: MutableMapping,
                 publisher: Publisher, metrics: Metrics, models: Models):
        self.settings, self.item_profiles = settings, item_profiles
        # every read and write names its partition (a read under the wrong one finds nothing)
        self.user_state = PartitionedTable(user_state, settings.topic_interactions)
        self.publisher, self.metrics, self.models = publisher, metrics, models
        self.pools = thread_pools(settings)
        self.catalog = Catalog(metrics, self.pools["scans"])
        self.item_stats = ItemStats(settings.cooccurrence_config().trending_half_life)
        self.neighbours: MutableMapping = {}  # item -> co-occurrence record (the worker's GlobalTable)
        self.due = DueLists(settings.debounce_max_seconds, settings.emit_max_lists)
        self.backfill_pending: dict[int, set[str]] = {}  # partition -> users owed a list at its end marker
        self.restored = Readiness()  # the schedule and the backfill sets have been derived from state
        # held by a stage from its read of users' states to its write of them whenever an await lies
        # between (a broker ack): another stage's write of the same user meanwhile would be overwritten
        # by the stale copy (the soak test lost interactions that way: a summary result, applied while
        # its request's ack was awaited, wrote back a state from before the interactions applied meanwhile)
        self.user_writes = asyncio.Lock()

    async def off_loop(self, fn, *args, pool: str = "models"):
        """Run blocking work in a thread of ``pool`` so heartbeats keep going (``thread_pools``)."""
        return await asyncio.get_running_loop().run_in_executor(self.pools[pool], fn, *args)


async def isolate(services: "Services", fn, inputs: list) -> tuple[list, dict[int, Exception]]:
    """``fn(batch) -> results`` (one per input) off the loop; when a batch raises a model error it is
    split in halves and retried, so one bad input fails alone. Returns the results (None where
    failed) and the exception of each failed input by position."""
    results: list = [None] * len(inputs)
    failures: dict[int, Exception] = {}

    async def run(lo: int, hi: int) -> None:
        try:
            out = await services.off_loop(fn, inputs[lo:hi])
        except MODEL_ERRORS as exc:
            if hi - lo == 1:
                failures[lo] = exc
                log.warning("model call failed for one input: %s: %s", type(exc).__name__, exc)
                return
            mid = (lo + hi) // 2
            await run(lo, mid)
            await run(mid, hi)
            return
        results[lo:hi] = out

    if inputs:
        await run(0, len(inputs))
    return results, failures


def scan_user_state(user_state: PartitionedTable | MutableMapping, partitions: set[int] | None) -> tuple[list[str], dict[int, set[str]]]:
    """What a restart or rebalance must rebuild from user state (a full scan: run it in a thread):
    users owed a list, and users owed one at their partition's backfill end."""
    owed: list[str] = []
    backfill: dict[int, set[str]] = {}
    for key, data in read_concurrently(lambda: list(user_state.items())):
        if not data or (partitions is not None and data.get("partition") not in partitions):
            continue
        user_id = key_text(key)
        if data.get("owed"):
            owed.append(user_id)
        if data.get("backfill_pending"):
            backfill.setdefault(data.get("partition"), set()).add(user_id)
    return owed, backfill
