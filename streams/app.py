"""The Faust worker: item and interaction agents, RocksDB tables, retrieval recommendations.

Built by a factory (``build_worker``) rather than at import time so tests and tools can run
several apps with their own topic names and state directories.

Processing guarantee: at-least-once delivery from Kafka, made effectively-once for state by
``UserState.already_applied`` (each user records the offset of the last interaction it applied,
and a redelivered one is skipped). Faust flushes the producer (changelogs, dead letters,
recommendations) before it commits offsets.
"""
from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone

import faust
from faust.streams import _current_event
import numpy as np

import schemas
from models import prompts
from models.embeddings import item_text
from models.retrieval import CatalogIndex, Popularity, recommend
from streams.metrics import Metrics
from streams.settings import Settings
from streams.state import UserState, content_hash

log = logging.getLogger("mmsr.worker")

CONTROL_HEADER = "mmsr-control"
BACKFILL_END = b"backfill-end"


@dataclass(frozen=True)
class Trigger:
    """What caused a recommendation list: carried on the output for tracing and latency."""

    topic: str
    partition: int
    offset: int
    event_time: str | None
    kind: str
    broker_timestamp: float | None  # seconds; the message's CreateTime/LogAppendTime

    def to_dict(self) -> dict:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset,
                "event_time": self.event_time, "kind": self.kind}


def utcnow() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_vector(vec: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vec, dtype=np.float32).tobytes()).decode()


def decode_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.float32)


def dead_letter_record(message, error: schemas.InvalidEvent) -> dict:
    value, key = message.value, message.key
    return {
        "original": None if value is None else base64.b64encode(value).decode(),
        "original_key": None if key is None else base64.b64encode(key).decode(),
        "original_size": 0 if value is None else len(value),
        "truncated": False,
        "source": {"topic": message.topic, "partition": message.partition, "offset": message.offset},
        "error": {"class": error.kind, "message": str(error)},
        "rejected_at": utcnow(),
    }


class Debouncer:
    """Per-user deadlines: a burst of interactions yields one list after the user goes quiet."""

    def __init__(self):
        self._due: dict[str, tuple[float, Trigger]] = {}

    def schedule(self, user_id: str, trigger: Trigger, delay: float) -> None:
        self._due[user_id] = (time.monotonic() + delay, trigger)

    def pop_due(self, now: float | None = None) -> list[tuple[str, Trigger]]:
        now = time.monotonic() if now is None else now
        due = [(u, t) for u, (d, t) in self._due.items() if d <= now]
        for user_id, _ in due:
            del self._due[user_id]
        return due

    def __len__(self) -> int:
        return len(self._due)


class Worker:
    """One Faust app with its topics, tables, agents, timers and web views."""

    def __init__(self, settings: Settings, embedder=None):
        self.settings = s = settings
        self.metrics = Metrics()
        self._embedder = embedder
        self._llms: dict = {}
        self.index: CatalogIndex | None = None
        self.popularity = Popularity()
        self._popularity_loaded = False
        self.debouncer = Debouncer()
        self.last_recommendations: OrderedDict[str, dict] = OrderedDict()
        self.fresh_summaries: dict[str, tuple[str, int]] = {}  # from summary events, until re-ranked
        self.waits: dict[str, int] = {}
        s.state_dir.mkdir(parents=True, exist_ok=True)
        self.app = faust.App(
            s.app_id,
            broker=[f"kafka://{b.strip()}" for b in s.bootstrap_servers.split(",")],
            store="rocksdb://",
            datadir=str(s.state_dir),
            web_bind=s.web_host,
            web_host=s.web_host,
            web_port=s.web_port,
            topic_partitions=s.user_partitions,
            topic_replication_factor=s.replication_factor,
            processing_guarantee="at_least_once",
            producer_max_request_size=32 * 1024 * 1024,
            consumer_max_fetch_size=8 * 1024 * 1024,
            broker_commit_interval=1.0,
            broker_session_timeout=s.session_timeout,
            broker_heartbeat_interval=min(3.0, s.session_timeout / 3),
            table_standby_replicas=0,
            autodiscover=False,
        )
        raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
        self.items_topic = self.app.topic(s.topic_items, **raw)
        self.interactions_topic = self.app.topic(s.topic_interactions, **raw)
        self.recommendations_topic = self.app.topic(s.topic_recommendations, **raw)
        self.user_summaries_topic = self.app.topic(s.topic_user_summaries, **raw)
        self.dead_letters_topic = self.app.topic(s.topic_dead_letters, **raw)
        self.user_state = self.app.Table(
            "user-state", default=None, partitions=s.user_partitions,
            key_type=str,
        )
        self.item_profiles = self.app.GlobalTable(
            "item-profiles", default=None, partitions=s.item_partitions,
            key_type=str,
        )
        self._register()

    # -- models -----------------------------------------------------------------------------
    @property
    def embedder(self):
        if self._embedder is None:
            from models.embeddings import TextEmbedder

            self._embedder = TextEmbedder(self.settings.embed_model, device=self.settings.device)
        return self._embedder

    def llm(self, name: str):
        """One loaded instance per model name, shared by the stages that use it."""
        if name not in self._llms:
            from models import registry

            self._llms[name] = registry.load(name, self.settings.device, self.settings.model_dtype)
        return self._llms[name]

    @functools.cached_property
    def summarizer(self):
        """The recurrent user summarizer, or None when MMSR_SUMMARY_MODEL is 'none'."""
        s = self.settings
        if s.summary_model == "none":
            return None
        from models.user_summarizer import SummarizerConfig, UserSummarizer

        config = SummarizerConfig(block_size=s.summary_block, max_new_tokens=s.summary_max_new_tokens,
                                  batch_size=s.summary_batch, max_chars=s.summary_max_chars)
        return UserSummarizer(self.llm(s.summary_model), config)

    @functools.cached_property
    def captioner(self):
        """The item summarizer, or None when MMSR_CAPTION_MODEL is 'none'."""
        s = self.settings
        if s.caption_model == "none":
            return None
        from models.images import ImageLimits
        from models.item_summarizer import CaptionConfig, ItemSummarizer

        limits = ImageLimits(s.image_timeout, s.image_max_bytes, s.image_max_pixels)
        config = CaptionConfig(max_new_tokens=s.caption_max_new_tokens, batch_size=s.caption_batch, limits=limits)
        return ItemSummarizer(self.llm(s.caption_model), config)

    @functools.cached_property
    def reranker(self):
        """The LoRA recommender's slot (hot-swappable adapter), or None when MMSR_RECOMMENDER_MODEL is 'none'."""
        s = self.settings
        if s.recommender_model == "none":
            return None
        from models.training import AdapterSlot

        return AdapterSlot(self.llm(s.recommender_model))

    def load_models(self) -> None:
        """Load (and on first use convert or build) every configured model before consuming."""
        _ = self.embedder, self.summarizer, self.captioner, self.reranker
        self.check_adapter()

    def check_adapter(self) -> bool:
        """Swap in the adapter directory's version when it differs from the one serving; True on a swap.

        A missing or unreadable directory keeps the current adapter (a retrain may be mid-rename).
        """
        path = self.settings.recommender_adapter
        if self.reranker is None or not path:
            return False
        from models.training import read_metadata

        try:
            version = read_metadata(path).get("version")
        except (OSError, ValueError):
            return False
        if not version or version == self.reranker.version:
            return False
        try:
            self.reranker.swap(path)
        except Exception as exc:  # a bad adapter must not stop the worker
            log.exception("adapter %s (version %s) could not be loaded: %s", path, version, exc)
            self.metrics.inc("adapter_failures_total")
            return False
        self.metrics.inc("adapter_swaps_total")
        log.info("recommender adapter version %s in use", version)
        return True

    def catalog(self) -> CatalogIndex:
        """The in-memory retrieval index, built from the item-profile table on first use."""
        if self.index is None:
            self.resync_index()
        return self.index

    def resync_index(self) -> None:
        """Rebuild from the GlobalTable, which every worker holds whole (other workers' items included)."""
        index = CatalogIndex(self.embedder.dim)
        for key, profile in list(self.item_profiles.items()):
            if profile and profile.get("embedding"):
                index.upsert(_text(key), decode_vector(profile["embedding"]))
        self.index = index
        self.metrics.gauge("catalog_items", len(index))

    def ensure_popularity(self) -> None:
        """Popularity over the users this worker holds: rebuilt from state after a restart."""
        if not self._popularity_loaded:
            for _, data in list(self.user_state.items()):
                for item_id in (data or {}).get("seen", []):
                    self.popularity.add(item_id)
            self._popularity_loaded = True

    # -- dead letters -----------------------------------------------------------------------
    async def dead_letter(self, message, error: schemas.InvalidEvent) -> None:
        record = dead_letter_record(message, error)
        await self.dead_letters_topic.send(key=message.key, value=json.dumps(record).encode())
        self.metrics.inc("dead_letters_total", reason=error.kind, topic=message.topic)
        log.warning("dead-lettered %s[%d]@%d: %s", message.topic, message.partition, message.offset, error)

    @staticmethod
    def accept(message, kind: str, key_field: str) -> dict:
        """Parse and validate; an event without the key its topic is partitioned by is rejected."""
        event = schemas.parse(kind, message.value)
        if message.key is None:
            raise schemas.InvalidEvent("NoKey", f"{kind} has no message key; key it by {key_field}")
        key = message.key.decode("utf-8", errors="replace")
        if key != event[key_field]:
            raise schemas.InvalidEvent("KeyMismatch", f"message key {key!r} differs from {key_field} {event[key_field]!r}")
        return event

    # -- items ------------------------------------------------------------------------------
    async def process_items(self, events) -> None:
        accepted = []
        for event in events:
            self.metrics.observe_offset(event.message.topic, event.message.partition, event.message.offset)
            try:
                accepted.append((event, self.accept(event.message, "item", "item_id")))
            except schemas.InvalidEvent as error:
                await self.dead_letter(event.message, error)
        upserts = [item for _, item in accepted if item.get("op") != "delete"]
        digests = {id(item): content_hash(item) for item in upserts}
        changed = []
        for item in upserts:
            old = self.item_profiles.get(item["item_id"])
            if not old or old.get("content_hash") != digests[id(item)] or "embedding" not in old:
                changed.append(item)
        loop = asyncio.get_running_loop()
        captions = await loop.run_in_executor(None, self.caption_items, changed)
        texts = [item_text(i["title"], i.get("categories"), i.get("description"))
                 + (f". {captions[id(i)]['caption']}" if id(i) in captions else "") for i in changed]
        vectors = await loop.run_in_executor(None, self.embedder.embed, texts, self.settings.embed_batch)
        fresh = {id(i): (text, vec) for i, text, vec in zip(changed, texts, vectors)}
        index = self.catalog()
        for event, item in accepted:
            in_partition_of(event)
            item_id = item["item_id"]
            if item.get("op") == "delete":
                self.item_profiles.pop(item_id, None)
                index.remove(item_id)
                self.metrics.inc("items_deleted_total")
                continue
            profile = dict(self.item_profiles.get(item_id) or {})
            profile.update({
                "item_id": item_id, "title": item["title"], "categories": item.get("categories", []),
                "description": item.get("description"), "image": item.get("image"),
                "content_hash": digests[id(item)], "event_time": item["event_time"],
            })
            if id(item) in fresh:  # new or changed content: caption and embedding are redone
                text, vector = fresh[id(item)]
                for key in ("caption", "caption_source", "image_error"):
                    profile.pop(key, None)
                profile.update(captions.get(id(item), {}))
                profile["text"] = text
                profile["embedding"] = encode_vector(vector)
                index.upsert(item_id, vector)
                self.metrics.inc("items_embedded_total")
            self.item_profiles[item_id] = profile
            self.metrics.inc("items_applied_total")
        self.metrics.gauge("catalog_items", len(index))

    def caption_items(self, items: list[dict]) -> dict[int, dict]:
        """Captions by ``id(item)``; none when captions are off. Runs in an executor thread."""
        captioner = self.captioner
        if captioner is None or not items:
            return {}
        from models.item_summarizer import ItemInput

        inputs = [ItemInput(i["item_id"], i["title"], i.get("categories"), i.get("description"), i.get("image"))
                  for i in items]
        started = time.perf_counter()
        captions = captioner.caption(inputs)
        self.metrics.inc("captions_total", len(captions))
        self.metrics.inc("caption_seconds_total", time.perf_counter() - started)
        for c in captions:
            if c.image_error:
                self.metrics.inc("caption_image_fallbacks_total")
        return {id(i): c.to_dict() for i, c in zip(items, captions)}

    # -- interactions -----------------------------------------------------------------------
    def is_fresh(self, event_time: str) -> bool:
        age = time.time() - schemas.parse_time(event_time).timestamp()
        return age <= self.settings.freshness_seconds

    async def process_interactions(self, events) -> None:
        """One batch, in order: valid events grouped per user (one state read and one write per
        user), dead letters sent as met, and a backfill-end marker applied only after every event
        before it in the batch."""
        by_user: dict[str, list] = {}
        for event in events:
            message = event.message
            self.metrics.observe_offset(message.topic, message.partition, message.offset)
            if _header(message, CONTROL_HEADER) == BACKFILL_END:
                await self.apply_user_groups(by_user)
                by_user = {}
                in_partition_of(event)
                self.finish_backfill(message)
                continue
            try:
                interaction = self.accept(message, "interaction", "user_id")
            except schemas.InvalidEvent as error:
                await self.dead_letter(message, error)
                continue
            by_user.setdefault(interaction["user_id"], []).append((event, interaction))
        await self.apply_user_groups(by_user)

    async def apply_user_groups(self, by_user: dict[str, list]) -> None:
        """Apply each user's events, run the summarizer over every block they completed, then
        write each user's state once: state, summary and offsets change together or not at all."""
        if not by_user:
            return
        self.ensure_popularity()
        catalog = self.catalog()
        s = self.settings
        summarizing = self.summarizer is not None
        pending_cap = 100 * s.summary_block if summarizing else s.summary_block
        states: dict[str, UserState] = {}
        triggers: dict[str, Trigger] = {}
        arrivals: dict[tuple[int, int], float | None] = {}
        for user_id, group in by_user.items():
            in_partition_of(group[-1][0])  # the user's partition: its RocksDB store and changelog
            state = UserState.from_dict(self.user_state.get(user_id), user_id)
            trigger = None
            for event, interaction in group:
                message = event.message
                if state.already_applied(message.partition, message.offset):
                    # still rewritten below, so a changelog record lost in a crash is sent again
                    self.metrics.inc("duplicates_skipped_total")
                    continue
                if state.apply(interaction, message.partition, message.offset, tail=s.history_tail,
                               seen_cap=s.seen_cap, pending_cap=pending_cap):
                    self.popularity.add(interaction["item_id"])
                if interaction["item_id"] not in catalog:
                    state.unknown_items += 1
                    self.metrics.inc("unknown_items_total")
                arrivals[(message.partition, message.offset)] = message.timestamp
                if self.is_fresh(interaction["event_time"]):
                    trigger = Trigger(message.topic, message.partition, message.offset,
                                      interaction["event_time"], "interaction", message.timestamp)
                else:
                    state.backfill_pending = True
                    self.metrics.inc("stale_events_total")
                self.metrics.inc("events_applied_total")
            if trigger is not None:
                triggers[user_id] = trigger
            states[user_id] = state
        summary_events = await self.summarize(states, arrivals) if summarizing else []
        # with the re-ranker on, a user whose block completed gets its list from the summary event
        summarized = {e["user_id"] for e in summary_events} if self.reranker is not None else set()
        for user_id, trigger in triggers.items():
            if user_id not in summarized:
                self.debouncer.schedule(user_id, trigger, s.debounce_seconds)
        # the summary events must be on the broker before the state that records them: if the
        # changelog write landed first and the worker died, the redelivered interactions would be
        # skipped as applied and the events never sent
        pending = [await self.user_summaries_topic.send(key=e["user_id"].encode(), value=json.dumps(e).encode())
                   for e in summary_events]
        if pending:
            await asyncio.gather(*pending)
        for user_id, state in states.items():
            in_partition_of(by_user[user_id][-1][0])
            self.user_state[user_id] = state.to_dict()

    def block_text(self, entry: dict) -> str:
        """An interaction as the summarizer reads it: title, categories and caption, or the id if unknown."""
        profile = self.item_profiles.get(entry["item_id"])
        if not profile:
            self.metrics.inc("summary_unknown_items_total")
            return f"Item {prompts.clean(entry['item_id'], 256)} (no catalog entry)"
        return prompts.describe_item(profile.get("title", entry["item_id"]), profile.get("categories"),
                                     None, profile.get("caption"))

    async def summarize(self, states: dict[str, UserState],
                        arrivals: dict[tuple[int, int], float | None] | None = None) -> list[dict]:
        """Every full pending block, recurrently, batched across users; one summary event per block.

        A failing model leaves the blocks pending (retried with the user's next interaction) and
        is counted; the interactions themselves are applied either way.
        """
        s = self.settings
        blocks = {u: st.full_blocks(s.summary_block) for u, st in states.items()}
        users = [u for u, b in blocks.items() if b]
        if not users:
            return []
        started = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                None, self.summarizer.recurrent,
                [[self.block_text(e) for block in blocks[u] for e in block] for u in users],
                [states[u].summary for u in users])
        except Exception as exc:  # the model must not stop the stream
            log.exception("summarizer failed for %d users: %s", len(users), exc)
            self.metrics.inc("summary_failures_total")
            return []
        self.metrics.inc("summary_seconds_total", time.perf_counter() - started)
        events = []
        for user_id, summaries in zip(users, results):
            state = states[user_id]
            for block, summary in zip(blocks[user_id], summaries):
                state.record_summary(summary, s.summary_block)
                self.metrics.inc("summaries_total")
                last = block[-1]
                arrived = (arrivals or {}).get((state.partition, last["offset"]))
                events.append({
                    "trigger": {"topic": s.topic_interactions, "partition": state.partition, "offset": last["offset"],
                                "event_time": last["event_time"], "timestamp": arrived},
                    "user_id": user_id, "summary": summary, "summary_version": state.summary_version,
                    "interaction_count": state.interaction_count - len(state.pending_block),
                    "block": [{"item_id": e["item_id"], "event_time": e["event_time"], "offset": e["offset"]}
                              for e in block],
                    "partition": state.partition, "model": s.summary_model, "generated_at": utcnow(),
                })
        return events

    def finish_backfill(self, message) -> None:
        """A replay's end marker for one partition: one list per user whose lists were held back."""
        trigger = Trigger(message.topic, message.partition, message.offset, None, "backfill-end", message.timestamp)
        owed = 0
        for key, data in list(self.user_state.items()):
            if data and data.get("backfill_pending") and data.get("partition") == message.partition:
                state = UserState.from_dict(data, _text(key))
                state.backfill_pending = False
                self.user_state[state.user_id] = state.to_dict()
                self.debouncer.schedule(state.user_id, trigger, 0.0)
                owed += 1
        self.metrics.inc("backfill_markers_total")
        log.info("backfill end on partition %d: %d users owed a list", message.partition, owed)

    # -- recommendations --------------------------------------------------------------------
    def on_summaries(self, events) -> None:
        """A fresh summary re-ranks its user's list at once, with that summary (the state record
        written in the same batch may not be readable yet when the event arrives). An event that
        is not a readable summary is skipped and counted, never fatal."""
        for event in events:
            message = event.message
            try:
                self.on_summary(message)
            except (ValueError, KeyError, TypeError, AttributeError, schemas.InvalidEvent) as exc:
                self.metrics.inc("summary_events_skipped_total")
                log.warning("unreadable summary event %s[%d]@%d: %s", message.topic, message.partition,
                            message.offset, exc)

    def on_summary(self, message) -> None:
        summary = schemas.parse("user_summary", message.value)
        trigger_info = summary.get("trigger") or {}
        event_time = trigger_info.get("event_time")
        if event_time and not self.is_fresh(event_time):
            return  # backfill: the end marker owes the user one list
        user_id = summary["user_id"]
        self.fresh_summaries[user_id] = (summary["summary"], summary["summary_version"])
        stamp = trigger_info.get("timestamp")
        trigger = Trigger(trigger_info.get("topic", message.topic), trigger_info.get("partition", message.partition),
                          trigger_info.get("offset", message.offset), event_time, "summary",
                          stamp if stamp is not None else message.timestamp)
        self.debouncer.schedule(user_id, trigger, 0.0)

    def candidates_for(self, state: UserState, k: int) -> tuple[str, list]:
        self.ensure_popularity()
        s = self.settings
        return recommend(self.catalog(), self.popularity, state.recent_items(s.recent_for_vector), state.seen, k,
                         s.recency_half_life)

    def build_recommendation(self, user_id: str, trigger: Trigger) -> dict | None:
        """A retrieval-stage list (no re-ranker, or a user without a summary yet)."""
        data = self.user_state.get(user_id)
        if not data:
            return None
        state = UserState.from_dict(data, user_id)
        strategy, hits = self.candidates_for(state, self.settings.top_k)
        return self.record(state, [(h.item_id, h.score) for h in hits], strategy, f"retrieval:{self.settings.embed_model}",
                           state.summary_version, trigger)

    def record(self, state: UserState, ranked: list[tuple[str, float]], strategy: str, model: str,
               summary_version: int, trigger: Trigger, **extra) -> dict:
        latency = None if trigger.broker_timestamp is None else (time.time() - trigger.broker_timestamp) * 1000
        return {
            "user_id": state.user_id,
            "items": [{"item_id": item_id, "score": round(score, 6), "rank": r}
                      for r, (item_id, score) in enumerate(ranked, 1)],
            "summary_version": summary_version,
            "interaction_count": state.interaction_count,
            "model": model,
            "strategy": strategy,
            "generated_at": utcnow(),
            "trigger": trigger.to_dict(),
            "latency_ms": None if latency is None else round(latency, 3),
            **extra,
        }

    def candidate(self, item_id: str):
        from models.recommender import Candidate

        profile = self.item_profiles.get(item_id) or {}
        return Candidate(item_id, profile.get("title", item_id), profile.get("categories"),
                         profile.get("description"), profile.get("caption"))

    def score(self, recommender, requests: list) -> tuple[list[list[float]], float]:
        """The batched re-ranker call; runs in an executor thread."""
        started = time.perf_counter()
        scores = recommender.score(requests)
        return scores, time.perf_counter() - started

    async def rerank(self, jobs: list[tuple[UserState, str, int, Trigger, list]]) -> list[dict]:
        """Score the jobs' retrieval candidates in one batched call across users.

        Text candidates only: fetching every candidate's image for every list would put the
        network in the scoring path; captions carry the images' content.
        """
        from models import prompts
        from models.recommender import ScoreRequest

        recommender = self.reranker.recommender  # one adapter version for the whole batch, even if a swap lands
        requests = [ScoreRequest(prompts.user_preferences(summary), [self.candidate(h.item_id) for h in hits])
                    for _, summary, _, _, hits in jobs]
        scores, seconds = await asyncio.get_running_loop().run_in_executor(None, self.score, recommender, requests)
        self.metrics.inc("rerank_seconds_total", seconds)
        self.metrics.inc("reranked_candidates_total", sum(len(r.candidates) for r in requests))
        out = []
        for (state, _, version, trigger, hits), user_scores in zip(jobs, scores):
            ranked = sorted(zip((h.item_id for h in hits), user_scores), key=lambda pair: -pair[1])
            out.append(self.record(
                state, ranked[:self.settings.top_k], "rerank", f"{recommender.lm.name}+{recommender.version}",
                version, trigger, base_model=recommender.lm.name, adapter_version=recommender.version,
                rerank={"candidates": len(hits), "batch_users": len(jobs), "seconds": round(seconds, 4)}))
        return out

    async def emit_due(self) -> None:
        due = self.debouncer.pop_due()
        if not due:
            return
        records, jobs = [], []
        for user_id, trigger in due:
            data = self.user_state.get(user_id)
            state = UserState.from_dict(data, user_id)
            summary, version = state.summary, state.summary_version
            fresh = self.fresh_summaries.pop(user_id, None)
            if fresh is not None and fresh[1] > version and self.waits.get(user_id, 0) < 100:
                # the summary event outran the state write of its batch: wait for the state (its
                # history must be excluded too) rather than re-rank against an older one
                self.fresh_summaries[user_id] = fresh
                self.waits[user_id] = self.waits.get(user_id, 0) + 1
                self.debouncer.schedule(user_id, trigger, 0.05)
                continue
            self.waits.pop(user_id, None)
            if not data:
                continue
            if fresh is not None and fresh[1] >= version:
                summary, version = fresh
            if self.reranker is None or not summary:
                records.append(self.build_recommendation(user_id, trigger))
                continue
            _, hits = self.candidates_for(state, self.settings.rerank_candidates)
            jobs.append((state, summary, version, trigger, hits))
        step = max(self.settings.rerank_users, 1)
        for start in range(0, len(jobs), step):
            batch = jobs[start:start + step]
            try:
                records += await self.rerank(batch)
            except Exception as exc:  # the model must not stop the stream: fall back to retrieval lists
                log.exception("re-ranking failed for %d users: %s", len(batch), exc)
                self.metrics.inc("rerank_failures_total")
                records += [self.build_recommendation(state.user_id, trigger) for state, _, _, trigger, _ in batch]
        for rec in records:
            if rec is not None:
                await self.publish(rec)

    async def publish(self, rec: dict) -> None:
        user_id = rec["user_id"]
        await self.recommendations_topic.send(key=user_id.encode(), value=json.dumps(rec).encode())
        self.last_recommendations[user_id] = rec
        self.last_recommendations.move_to_end(user_id)
        while len(self.last_recommendations) > 100_000:
            self.last_recommendations.popitem(last=False)
        self.metrics.inc("recommendations_emitted_total", strategy=rec["strategy"])
        if rec["latency_ms"] is not None and rec["trigger"]["kind"] in ("interaction", "summary"):
            self.metrics.observe_latency(rec["latency_ms"] / 1000)

    # -- wiring -----------------------------------------------------------------------------
    def _register(self) -> None:
        app, s = self.app, self.settings

        @app.agent(self.items_topic, name="items")
        async def items_agent(stream):
            async for events in stream.take_events(s.embed_batch, within=s.embed_within):
                await self.process_items(events)

        @app.agent(self.interactions_topic, name="interactions")
        async def interactions_agent(stream):
            async for events in stream.take_events(s.interaction_batch, within=s.interaction_within):
                await self.process_interactions(events)

        @app.agent(self.user_summaries_topic, name="recommend")
        async def recommend_agent(stream):
            async for events in stream.take_events(s.rerank_users, within=0.01):
                self.on_summaries(events)

        @app.timer(interval=0.05)
        async def emitter():
            await self.emit_due()

        if s.recommender_model != "none" and s.recommender_adapter:
            @app.timer(interval=s.adapter_poll_seconds)
            async def adapter_watch():
                await asyncio.get_running_loop().run_in_executor(None, self.check_adapter)

        if s.index_resync_seconds > 0:
            @app.timer(interval=s.index_resync_seconds)
            async def resync():
                self.resync_index()

        from streams.web import register_views

        register_views(self)

    async def consumer_lag(self) -> dict[str, int]:
        """Per input partition: the high watermark minus the next offset this worker will read."""
        consumer = self.app.consumer
        lags = {}
        for tp in consumer.assignment():
            if tp.topic not in (self.settings.topic_interactions, self.settings.topic_items):
                continue
            high = consumer.highwater(tp)
            done = self.metrics.last_offsets.get((tp.topic, tp.partition), -1)
            if high is not None:
                lags[f"{tp.topic}/{tp.partition}"] = max(int(high) - (done + 1), 0)
        return lags


def in_partition_of(event) -> None:
    """Make the next table reads and writes use ``event``'s partition (RocksDB store, changelog).

    Faust takes that partition from its current-event context variable, for reads of a
    partitioned table too (a read under another partition's event finds nothing); in a batch the
    variable must name each access's own event. Only the variable is set, in this agent's task: assigning
    ``stream.current_event`` instead races with take_events' buffer filler, which reads that
    attribute after an await, so one event was buffered twice and the next one lost.
    """
    _current_event.set(weakref.ref(event))


def _header(message, name: str) -> bytes | None:
    headers = message.headers or {}
    items = headers.items() if isinstance(headers, dict) else headers
    for key, value in items:
        if key == name:
            return value
    return None


def _text(key) -> str:
    return key.decode() if isinstance(key, bytes) else str(key)


def build_worker(settings: Settings, embedder=None) -> Worker:
    return Worker(settings, embedder=embedder)
