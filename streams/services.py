"""What the stages stand on: models, the catalog index, publishing and the lists owed.

Stages (``streams.stages``) take a ``Services`` and never each other or the Faust app, so each
can be driven in a test with plain mappings for tables and a recording publisher.
"""
from __future__ import annotations

import asyncio
import functools
import heapq
import json
import logging
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Container, Iterable, MutableMapping

import orjson

from models.candidates.retrieval import CatalogIndex, Popularity
from streams.events import decode_vector, dead_letter_record, key_text
from streams.kafka.continuity import is_checkpoint_key
from streams.metrics import Metrics
from streams.settings import Settings

log = logging.getLogger(__name__)

# what a model call is expected to raise on a bad input (torch and tokenizers raise RuntimeError
# and ValueError, image and file access OSError); anything else is a programming error and propagates
MODEL_ERRORS = (RuntimeError, ValueError, OSError)


class Models:
    """Every model the worker runs, loaded once. The recommender gets its own instance of its base
    model: peft puts adapters into a model in place, and captions and summaries must come from the
    base weights. The state role loads no generating model (``Settings.generates_here``)."""

    def __init__(self, settings: Settings, metrics: Metrics, embedder=None):
        self.settings, self.metrics = settings, metrics
        self._embedder = embedder
        self._generators: dict[str, object] = {}

    def _load(self, name: str):
        from models import registry

        return registry.load(name, self.settings.device, self.settings.model_dtype)

    def generator(self, name: str):
        """One loaded instance per model name for the stages that generate (never carries an adapter)."""
        if name not in self._generators:
            from models import registry

            self._generators[name] = registry.load(name, self.settings.device, self.settings.generation_dtype,
                                                   generates=True)
        return self._generators[name]

    @property
    def embedder(self):
        if self._embedder is None:
            from models.embeddings import TextEmbedder

            self._embedder = TextEmbedder(self.settings.embed_model, device=self.settings.device)
        return self._embedder

    def embed(self, texts: list[str]):
        """Item texts to vectors, in batches of MMSR_EMBED_BATCH (blocking: call it in a thread)."""
        return self.embedder.embed(texts, self.settings.embed_batch)

    @functools.cached_property
    def summarizer(self):
        """The recurrent user summarizer, or None when MMSR_SUMMARY_MODEL is 'none'."""
        if self.settings.summary_model == "none" or not self.settings.generates_here:
            return None
        from models.llm.user_summarizer import UserSummarizer

        return UserSummarizer(self.generator(self.settings.summary_model), self.settings.summarizer_config())

    @functools.cached_property
    def captioner(self):
        """The captioner, or None when MMSR_CAPTION_MODEL is 'none'."""
        if self.settings.caption_model == "none" or not self.settings.generates_here:
            return None
        from models.llm.captioner import Captioner

        return Captioner(self.generator(self.settings.caption_model), self.settings.caption_config())

    @functools.cached_property
    def reranker(self):
        """The LoRA recommender's slot (hot-swappable adapter), or None when MMSR_RECOMMENDER_MODEL is 'none'."""
        if self.settings.recommender_model == "none" or not self.settings.generates_here:
            return None
        from models.llm.serving import AdapterSlot

        return AdapterSlot(self._load(self.settings.recommender_model), self.settings.scorer_config())

    def load_all(self) -> None:
        """Load (and on first use convert or build) every configured model before consuming."""
        if self.settings.role != "llm":  # the llm role embeds nothing: the state role re-embeds captioned items
            _ = self.embedder
        _ = self.summarizer, self.captioner, self.reranker
        if self.settings.generation_warm_up:
            self.warm_up()
        self.check_sequential()  # first: an adapter with collaborative tokens pairs with it
        self.check_adapter()

    def warm_up(self) -> dict[str, float]:
        """Compile the captioner's and summarizer's decoding now, where it compiles at all
        (``models.llm.generation.warm_up``); seconds per model warmed."""
        spent = {}
        # the summarizer first: its longest prompt is the longer, and when both share one model the
        # cache never shrinks, so the captioner's calls then reuse its length (2 graphs, not 4,
        # with the tiny LLaVA serving both)
        for name, model in (("summarizer", self.summarizer), ("captioner", self.captioner)):
            started = time.perf_counter()
            if model is not None and model.warm_up():
                spent[name] = time.perf_counter() - started
                log.info("%s decoding compiled before serving in %.1f s", name, spent[name])
        return spent

    sequential = None  # the served SequentialRetriever, or None
    _refused: tuple | None = None  # (adapter version, sequential version) of the last refused swap

    def check_sequential(self) -> bool:
        """Load the sequential model directory's version when it differs from the one serving; True on a swap.

        A missing, half-written or unreadable directory keeps the current model.
        """
        path = self.settings.retrieval_model
        if path == "none":
            return False
        from models.candidates.sequential import SequentialRetriever, read_version

        version = read_version(path)
        if not version or (self.sequential is not None and self.sequential.version == version):
            return False
        try:
            loaded = SequentialRetriever.from_pretrained(path)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.warning("sequential model %s (version %s) could not be loaded: %s", path, version, exc)
            self.metrics.inc("retrieval_model_failures_total")
            return False
        self.sequential = loaded  # one assignment: a list in progress keeps the model it started with
        self.metrics.inc("retrieval_model_swaps_total")
        log.info("sequential model version %s in use (%d items; EASE: %s)", loaded.version, len(loaded.vocabulary),
                 "none" if loaded.ease is None else f"{len(loaded.ease.vocabulary)} items")
        return True

    def check_adapter(self) -> bool:
        """Swap in the adapter directory's version when it differs from the one serving; True on a swap.

        A missing or unreadable directory keeps the current adapter (a retrain may be mid-rename).
        """
        path = self.settings.recommender_adapter
        if self.reranker is None or not path:
            return False
        from models.llm.serving import read_metadata

        try:
            version = read_metadata(path).get("version")
        except (OSError, ValueError):
            return False
        if not version or version == self.reranker.version:
            return False
        attempt = (version, None if self.sequential is None else self.sequential.version)
        if attempt == self._refused:
            return False  # refused with this sequential model already; said once
        try:
            self.reranker.swap(path, self.sequential)
        except MODEL_ERRORS as exc:  # a bad adapter (or one paired with another sequential model) must not stop the worker
            log.error("adapter %s (version %s) could not be loaded, serving %s still: %s", path, version,
                      self.reranker.version, exc)
            self.metrics.inc("adapter_failures_total")
            self._refused = attempt
            return False
        self.metrics.inc("adapter_swaps_total")
        log.info("recommender adapter version %s in use", version)
        for difference in text_mismatches(read_metadata(path), self.settings):
            self.metrics.inc("adapter_text_mismatches_total")
            log.warning("adapter %s was trained on other texts than this worker writes: %s", version, difference)
        return True


# the fields of an adapter's training protocol that shape the texts it reads, and the settings
# with which a worker writes those texts
PROTOCOL_TEXT_SETTINGS = {"block": "summary_block", "caption_tokens": "caption_max_new_tokens",
                          "summary_tokens": "summary_max_new_tokens", "summary_model": "summary_model"}


def trained_text_settings(metadata: dict) -> dict[str, object]:
    """The settings that write the texts an adapter was trained on (those its protocol records)."""
    protocol = (metadata.get("data") or {}).get("protocol") or {}
    # an empty summary_model: the summaries were written by the adapter's base model
    return {setting: protocol[name] for name, setting in PROTOCOL_TEXT_SETTINGS.items()
            if protocol.get(name) not in (None, "")}


def text_mismatches(metadata: dict, settings: Settings) -> list[str]:
    """Where the texts an adapter was trained on (its protocol's block and generation lengths)
    differ from what this worker writes: such an adapter is served out of its training distribution."""
    trained = trained_text_settings(metadata)
    return [f"{name}: trained {trained[setting]}, served {getattr(settings, setting)}"
            for name, setting in PROTOCOL_TEXT_SETTINGS.items()
            if setting in trained and trained[setting] != getattr(settings, setting)]


class Catalog:
    """The content-similarity index over the catalog, kept incrementally; full rebuilds run in a thread.

    The index follows the item-profile GlobalTable: this worker's own writes and every other
    worker's (through the table's changelog) are applied one item at a time, so the loop never
    scans the catalog.
    """

    def __init__(self, metrics: Metrics, pool=None):
        self.metrics = metrics
        self.index: CatalogIndex | None = None
        self.pool = pool  # the executor rebuilds run in (None: asyncio's default)
        # updates that arrive before the first build or while a rebuild runs, replayed on its result
        self._journal: list[tuple[str, object]] | None = []

    @property
    def ready(self) -> bool:
        return self.index is not None

    def __contains__(self, item_id: str) -> bool:
        return self.index is not None and item_id in self.index

    def known(self) -> Container[str]:
        """The ids in the index, for many membership tests in a row: each ``in`` on the catalog
        is two Python calls, and the interactions stage makes some twenty per interaction (its
        window filtered to catalog items). Live until the next rebuild swaps the index."""
        return self.index.ids() if self.index is not None else frozenset()

    def __len__(self) -> int:
        return 0 if self.index is None else len(self.index)

    # -- the index -----------------------------------------------------------------------------
    def upsert(self, item_id: str, vector) -> None:
        if self._journal is not None:
            self._journal.append((item_id, vector))
        if self.index is not None:
            self.index.upsert(item_id, vector)
            self.metrics.gauge("catalog_items", len(self.index))

    def remove(self, item_id: str) -> None:
        if self._journal is not None:
            self._journal.append((item_id, None))
        if self.index is not None:
            self.index.remove(item_id)
            self.metrics.gauge("catalog_items", len(self.index))

    def apply_profile(self, item_id: str, profile: dict | None) -> None:
        """One item-profile value as the table stores it (None: deleted)."""
        if profile and profile.get("embedding"):
            self.upsert(item_id, decode_vector(profile["embedding"]))
        elif profile is None:
            self.remove(item_id)

    @staticmethod
    def build(dim: int, profiles: Iterable[tuple[object, dict]]) -> CatalogIndex:
        """A whole index from (key, profile) pairs: the work of a rebuild, meant for a thread."""
        index = CatalogIndex(dim)
        for key, profile in profiles:
            if profile and profile.get("embedding"):
                index.upsert(key_text(key), decode_vector(profile["embedding"]))
        return index

    async def rebuild(self, dim: int, profiles: Callable[[], Iterable[tuple[object, dict]]]) -> None:
        """Rebuild in an executor thread and swap it in; updates made meanwhile are replayed on top."""
        if self._journal is None:
            self._journal = []
        journal = self._journal
        index = await asyncio.get_running_loop().run_in_executor(
            self.pool, lambda: self.build(dim, read_concurrently(lambda: list(profiles()))))
        for item_id, vector in journal:
            index.upsert(item_id, vector) if vector is not None else index.remove(item_id)
        self._journal = None
        self.index = index
        self.metrics.inc("index_rebuilds_total")
        self.metrics.gauge("catalog_items", len(index))


class ItemStats:
    """Every item's interaction count and trending rank, from the item-keyed aggregates
    (``streams.stages.neighbours``): global, whatever the number of workers, and kept item by
    item from this worker's writes and the table's changelog. Ranked in a thread on a timer."""

    def __init__(self, half_life: float):
        self.half_life = half_life
        self.counts: dict[str, int] = {}
        self.trending = Popularity(auto_rank=False)

    def apply(self, item_id: str, record: dict | None) -> None:
        """One entry of the item-neighbours table, from any path (a fold, the changelog, a
        restore scan); the table also holds the offset guard's checkpoints, which are not items."""
        from models.candidates.cooccurrence import trend_key

        if is_checkpoint_key(item_id):
            return
        if not record:
            self.counts.pop(item_id, None)
            self.trending.remove(item_id)
            return
        self.counts[item_id] = record["count"]
        key = trend_key(record, self.half_life)
        if key > float("-inf"):
            self.trending.set(item_id, key)


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
        self.settings, self.user_state, self.item_profiles = settings, user_state, item_profiles
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


def thread_pools(settings: Settings) -> dict[str, ThreadPoolExecutor]:
    """Bounded executors, one per kind of blocking work, so none waits behind another: a list is
    not held up by a seconds-long generation, nor a model call by a 30 s broker read. (All of it
    shared asyncio's default executor: 6 threads on 2 cores.)"""
    return {
        "models": ThreadPoolExecutor(settings.model_threads, "mmsr-models"),  # embed, caption, summarize, score, load
        "lists": ThreadPoolExecutor(1, "mmsr-lists"),  # the candidate stage
        "scans": ThreadPoolExecutor(1, "mmsr-scans"),  # table scans, index rebuilds, trending ranks
        "broker": ThreadPoolExecutor(2, "mmsr-broker"),  # the offset guard's blocking reads
    }


CONCURRENT_CHANGE = ("changed size during iteration", "mutated during iteration")


def read_concurrently(fn, *args, attempts: int = 5):
    """``fn(*args)``, again if a dict it iterates changed meanwhile. Faust's RocksDB store walks
    its dict of partition databases on every global-table read and scan, and the loop adds to
    that dict when it opens a partition's database; a read from another thread that meets it
    raises RuntimeError and is simply made again (the loop opens databases rarely)."""
    for attempt in range(attempts):
        try:
            return fn(*args)
        except RuntimeError as exc:
            if attempt == attempts - 1 or not any(text in str(exc) for text in CONCURRENT_CHANGE):
                raise


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


def scan_user_state(user_state: MutableMapping, partitions: set[int] | None) -> tuple[list[str], dict[int, set[str]]]:
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
