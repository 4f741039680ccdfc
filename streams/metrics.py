"""The worker's Prometheus metrics, through prometheus-client (standard exposition, process metrics).

Every metric is declared here with its help and labels, so a typo in a name fails at once
instead of exporting a new series; each worker has its own registry (several workers can share
a test process).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import PlatformCollector, ProcessCollector

COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "events_applied_total": ("interactions applied to user state", ()),
    "duplicates_skipped_total": ("redelivered interactions skipped (offset already applied)", ()),
    "stale_events_total": ("interactions older than the freshness window (backfill)", ()),
    "unknown_items_total": ("interactions with an item not in the catalog", ()),
    "dead_letters_total": ("events rejected to the dead-letter topic", ("reason", "topic")),
    "items_applied_total": ("item events applied to the catalog", ()),
    "items_deleted_total": ("item deletions applied", ()),
    "items_embedded_total": ("item embeddings computed (text, or text and caption)", ()),
    "caption_requests_total": ("items sent to the captioner", ()),
    "captions_total": ("captions generated", ()),
    "captions_applied_total": ("captions applied to a profile and re-embedded", ()),
    "captions_outdated_total": ("captions dropped because the item changed meanwhile", ()),
    "captions_rejected_total": ("generated captions not used (empty or degenerate)", ("reason",)),
    "caption_image_fallbacks_total": ("items captioned from text because their image failed", ()),
    "caption_seconds_total": ("seconds spent captioning", ()),
    "summaries_total": ("user summaries recorded in state (and sent on user-summaries)", ()),
    "summaries_generated_total": ("summaries the model has written, step by step (progress of a long call)", ()),
    "summary_failures_total": ("summarizer inputs that failed alone (after splitting the batch)", ()),
    "summary_seconds_total": ("seconds spent summarizing", ()),
    "summary_unknown_items_total": ("summary inputs naming an item not in the catalog", ()),
    "recommendations_emitted_total": ("lists published", ("strategy",)),
    "lists_owed_total": ("lists owed and recorded in user state", ("reason",)),
    "rerank_seconds_total": ("seconds spent re-ranking", ()),
    "reranked_candidates_total": ("candidates scored by the re-ranker", ()),
    "rerank_failures_total": ("re-rank batches that fell back to candidate-stage lists", ()),
    "adapter_swaps_total": ("adapter versions swapped in", ()),
    "adapter_failures_total": ("adapters that could not be loaded", ()),
    "adapter_text_mismatches_total": ("settings in which a served adapter's training texts differ", ()),
    "backfill_markers_total": ("end-of-backfill markers applied", ()),
    "index_rebuilds_total": ("full catalog index rebuilds (off the event loop)", ()),
    "pair_entries_total": ("co-occurrence and count increments sent, by target item", ()),
    "pair_messages_total": ("item-pairs messages sent (increments packed per item partition)", ()),
    "pair_entries_applied_total": ("increments applied to item records (redeliveries skipped)", ()),
    "pair_entries_skipped_total": ("increments skipped as already applied", ()),
    "pair_batches_total": ("batches of item-pairs messages folded (each stores every item record it changed)", ()),
    "neighbour_records_written_total": ("item records stored by the fold: batches times the records each changed", ()),
    "retrieval_model_swaps_total": ("sequential model versions loaded", ()),
    "retrieval_model_failures_total": ("sequential model directories that could not be loaded", ()),
    "summary_requests_total": ("state role: summary requests sent to the llm role", ()),
    "summaries_skipped_total": ("state role: summaries not applied (not newer, or not the next block)", ("reason",)),
    "rerank_requests_total": ("state role: re-rank requests sent to the llm role", ()),
    "offsets_recovered_total": ("input records the consumer never delivered, read from the broker by the offset "
                                "guard and applied in order", ("topic",)),
    "offsets_dropped_total": ("input records not handed to a stage: already taken (redelivery) or of a revoked "
                              "partition", ("topic", "reason")),
    "catch_up_errors_total": ("offset guard checks of idle partitions that could not reach the broker (retried "
                              "at the next tick)", ("topic",)),
    "stalled_catch_ups_total": ("partitions the consumer stopped delivering while their log went on: their records "
                                "read from the broker by the offset guard and applied", ("topic",)),
}
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "catalog_items": ("items in this worker's retrieval index", ()),
    "consumer_lag": ("high watermark minus the next offset to process", ("topic", "partition")),
    "lists_pending": ("users with a list due in this worker", ()),
    "items_with_neighbours": ("items whose co-occurrence record this worker sees", ()),
}
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._counters = {n: Counter(f"mmsr_{n}", doc, labels, registry=self.registry)
                          for n, (doc, labels) in COUNTERS.items()}
        self._gauges = {n: Gauge(f"mmsr_{n}", doc, labels, registry=self.registry) for n, (doc, labels) in GAUGES.items()}
        self.latency = Histogram("mmsr_event_to_recommendation_seconds",
                                 "broker time of the triggering event to the list's publication",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.last_offsets: dict[tuple[str, int], int] = {}

    def inc(self, name: str, n: float = 1, **labels: str) -> None:
        counter = self._counters[name]
        (counter.labels(**labels) if labels else counter).inc(n)

    def get(self, name: str, **labels: str) -> float:
        """A counter's value, summed over the label sets that contain the given labels."""
        total = 0.0
        for family in self._counters[name].collect():
            for sample in family.samples:
                if sample.name.endswith("_total") and labels.items() <= sample.labels.items():
                    total += sample.value
        return total

    def gauge(self, name: str, value: float, **labels: str) -> None:
        gauge = self._gauges[name]
        (gauge.labels(**labels) if labels else gauge).set(value)

    def observe_offset(self, topic: str, partition: int, offset: int) -> None:
        self.last_offsets[(topic, partition)] = offset

    def observe_latency(self, seconds: float) -> None:
        self.latency.observe(seconds)

    def render(self, lag: dict[str, int]) -> bytes:
        """The Prometheus text exposition, with the consumer lag read at scrape time."""
        self._gauges["consumer_lag"].clear()
        for tp, value in lag.items():
            topic, partition = tp.rsplit("/", 1)
            self.gauge("consumer_lag", value, topic=topic, partition=partition)
        return generate_latest(self.registry)
