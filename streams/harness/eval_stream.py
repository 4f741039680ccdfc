"""`mmsr eval-stream`: the lists a consumer of the recommendations topic would have shown, scored.

A log is replayed through a real broker and a real worker. A global time split makes the first
part backfill (replayed in time order: state, counts and summaries move, no lists, then one list
per user at the backfill's end) and the rest the test window. Models trained offline (the
sequential model) see only pre-split events. In the test window events go out in time order;
before an event of a scored user is sent, the harness waits until the worker has emitted that
user's list reflecting their previous event (lockstep, so the measure does not depend on machine
speed), and scores the event against it: HR@k, NDCG@k, MRR@k. At the same moments it scores the
list popularity would give (counts of everything replayed so far, the user's history excluded),
and the list of the last ``recent_days`` of event time (the baseline that beats many sequential
models under a time split).

Event times are shifted so that the split falls on the wall clock at the start of the run: the
backfill is in the past (older than the worker's freshness window, so it emits no lists) and the
test window is recent. The order and spacing of events are kept.
"""
from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import schemas
from models.config import SequentialSourceConfig
from models.evaluation.prequential import Scores, rank_within, time_split


@dataclass(frozen=True)
class StreamEvalConfig:
    test_fraction: float = field(default=0.1, metadata={"help": "last share of events by time that is scored"})
    users: int = field(default=0, metadata={"help": "scored users (a seeded sample of those with test events; 0: all)"})
    sample_users: int = field(default=0, metadata={
        "help": "replay only a seeded sample of this many users, all their events (0: every user); the time "
                "split is taken on the sample's events"})
    seed: int = field(default=0, metadata={"help": "user samples"})
    recent_days: float = field(default=7.0, metadata={
        "help": "the recent-popularity row: the most interacted items of this many days of event time before "
                "each scored event"})
    k: int = field(default=10, metadata={"help": "list length scored (HR@k, NDCG@k, MRR@k)"})
    sequential: bool = field(default=True, metadata={"help": "train SASRec on the pre-split events and serve it"})
    sasrec_epochs: int = field(default=SequentialSourceConfig.epochs, metadata={"help": "SASRec training epochs"})
    fit_weights: bool = field(default=False, metadata={
        "help": "fit the blend weights on a validation window before the test window (offline replay of the "
                "same sources) and run the worker with them"})
    validation_fraction: float = field(default=0.1, metadata={"help": "share of pre-split events used to fit weights"})
    wait_seconds: float = field(default=60.0, metadata={"help": "longest wait for one list before giving up"})
    sequential_model: str = field(default="", metadata={
        "help": "serve this sequential model directory instead of training one (it must be trained on pre-split "
                "events only: its recorded 'until' is checked)"})
    reranker: str = field(default="", metadata={
        "help": "put the re-ranker in the loop: this adapter directory (mmsr train), with --llm for captions, "
                "summaries and scoring, written as the adapter was trained; the catalog's captions and the backfill's "
                "summaries are awaited before the test window. Slow on a CPU: use a subset (bench/rerank_stream.py)"})
    llm: str = field(default="smollm2-135m-instruct", metadata={"help": "with --reranker: the summary and scoring LLM"})


WORKER_COUNTERS = ("events_applied_total", "recommendations_emitted_total", "lists_owed_total", "dead_letters_total",
                   "captions_total", "summaries_total",
                   "pair_entries_applied_total", "pair_entries_skipped_total", "retrieval_model_swaps_total",
                   # the offset guard's reads from the broker: each one is an event the stream did not deliver in time
                   "stalled_catch_ups_total", "offsets_recovered_total", "catch_up_errors_total")


def shifted(event: dict, delta: float) -> dict:
    t = schemas.parse_time(event["event_time"]).timestamp() + delta
    return {**event, "event_time": datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}


class ListWatcher:
    """Follows the recommendations topic: each user's newest list and the interaction count it reflects."""

    def __init__(self, bootstrap: str, topic: str):
        from streams.kafka.client import topic_reader

        self.consumer = topic_reader(bootstrap, topic, **{"fetch.wait.max.ms": 10})
        self.latest: dict[str, dict] = {}
        self.count = 0
        self._changed = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            for message in self.consumer.consume(500, timeout=0.05):
                if message.error():
                    continue
                rec = json.loads(message.value())
                with self._changed:
                    old = self.latest.get(rec["user_id"])
                    if old is None or rec.get("interaction_count", 0) >= old.get("interaction_count", 0):
                        self.latest[rec["user_id"]] = rec
                    self.count += 1
                    self._changed.notify_all()

    def wait_for(self, user: str, interactions: int, timeout: float) -> dict | None:
        """The user's newest list once it reflects ``interactions`` interactions (None on timeout)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                rec = self.latest.get(user)
                if rec is not None and rec.get("interaction_count", 0) >= interactions:
                    return rec
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.consumer.close()


@dataclass
class Tally:
    stream: Scores
    popularity: Scores
    candidate_stage: Scores  # the same lists in the candidate stage's order (re-ranked lists carry it)
    recent_popularity: Scores
    strategies: Counter = field(default_factory=Counter)
    sources: Counter = field(default_factory=Counter)
    without_list: int = 0
    timeouts: int = 0
    scored: list = field(default_factory=list)  # per event: user, item, the 1-based ranks in both lists (0: miss)


def popularity_list(counts: Counter, seen: set[str], k: int, ranked_cache: dict) -> list[str]:
    """Top k by count, history excluded (the ranking is re-sorted only when counts changed)."""
    if ranked_cache.get("version") != ranked_cache.get("counts_version"):
        ranked_cache["ranked"] = [i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        ranked_cache["version"] = ranked_cache.get("counts_version")
    out = []
    for item in ranked_cache["ranked"]:
        if item not in seen:
            out.append(item)
            if len(out) == k:
                break
    return out


def sample_of_users(events: list[dict], users: int, seed: int) -> list[dict]:
    """Every event of ``users`` users drawn with ``seed`` (all events when 0), order kept."""
    if not users:
        return events
    everyone = sorted({e["user_id"] for e in events})
    chosen = set(random.Random(seed).sample(everyone, min(users, len(everyone))))
    return [e for e in events if e["user_id"] in chosen]


class RecentCounts:
    """Interactions per item within ``seconds`` of event time before the event being scored."""

    def __init__(self, seconds: float):
        self.seconds, self.window, self.counts = seconds, deque(), Counter()

    def add(self, event: dict) -> None:
        self.window.append((schemas.parse_time(event["event_time"]).timestamp(), event["item_id"]))
        self.counts[event["item_id"]] += 1

    def top(self, event: dict, seen: set[str], k: int) -> list[str]:
        """The ``k`` most interacted items of the window that ends at ``event``'s time, ``seen`` excluded."""
        start = schemas.parse_time(event["event_time"]).timestamp() - self.seconds
        while self.window and self.window[0][0] < start:
            _, item = self.window.popleft()
            self.counts[item] -= 1
            if not self.counts[item]:
                del self.counts[item]
        ranked = sorted(((i, c) for i, c in self.counts.items() if i not in seen), key=lambda kv: (-kv[1], kv[0]))
        return [i for i, _ in ranked[:k]]


def run(config: StreamEvalConfig, out_dir: Path, items: list[dict], interactions: list[dict],
        bootstrap: str | None = None, worker_settings: dict | None = None, log=print) -> dict:
    from tqdm.auto import tqdm

    from streams.harness.process import WorkerProcess, wait_until
    from streams.kafka.admin import create_topics
    from streams.kafka.client import ItemProducer
    from streams.kafka.launcher import LocalKafka, free_port
    from streams.replay import replay, window
    from streams.settings import Settings, prefixed_topics

    started = time.time()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_previous_run(out_dir)
    events = sample_of_users(window([schemas.validate("interaction", e) for e in interactions], None, None),
                             config.sample_users, config.seed)
    catalog = {i["item_id"] for i in items if i.get("op") != "delete"}
    split = time_split(events, config.test_fraction)
    backfill, test = events[:split], events[split:]
    test_users = sorted({e["user_id"] for e in test})
    scored = set(test_users if not config.users else
                 random.Random(config.seed).sample(test_users, min(config.users, len(test_users))))
    log(f"{len(events)} events: {len(backfill)} backfill, {len(test)} test ({len(test_users)} users, "
        f"{len(scored)} scored)")
    timings: dict[str, float] = {}

    overrides = dict(worker_settings or {})
    if config.sequential_model:
        check_trained_before(config.sequential_model, test[0]["event_time"] if test else None)
        overrides.setdefault("retrieval_model", str(Path(config.sequential_model).resolve()))
    elif config.sequential:
        timings["train_retrieval"] = train_sequential(backfill, out_dir / "sequential", config, log)
        overrides.setdefault("retrieval_model", str(out_dir / "sequential"))
    if config.reranker:
        for name, value in reranker_settings(config.reranker, config.llm).items():
            overrides.setdefault(name, value)
    fitted = None
    if config.fit_weights:
        from streams.settings import Settings, prefixed_topics

        fitted = fit_blend_weights(items, backfill, config, out_dir, Settings(**overrides).cooccurrence_config(), log)
        overrides.update({f"weight_{name}": w for name, w in fitted["weights"].items()})

    broker = None
    if bootstrap is None:
        broker = LocalKafka(out_dir / "kafka")
        bootstrap = broker.start(port=0, timeout=120).bootstrap
    prefix = f"eval{uuid.uuid4().hex[:6]}"
    web_port = free_port()
    settings = Settings(**{
        "bootstrap_servers": bootstrap, "data_dir": str(out_dir / "worker"), "app_id": f"{prefix}-app",
        "web_port": web_port, "summary_model": "none", "caption_model": "none", "recommender_model": "none",
        "debounce_seconds": 0.0, "emit_interval": 0.01, "interaction_within": 0.005, "top_k": config.k,
        "torch_threads": 1,
        **prefixed_topics(prefix),
        **overrides})
    create_topics(settings)
    worker = WorkerProcess(settings.to_env(), web_port, out_dir / "worker.log").start(timeout=600)
    watcher = ListWatcher(bootstrap, settings.topic_recommendations)
    try:
        t0 = time.time()
        with ItemProducer(bootstrap, settings.topic_items) as producer:
            for item in items:
                producer.send(item)
        wait_until(lambda: worker.metric("catalog_items") >= len(catalog), timeout=900, interval=0.5,
                   message="catalog embedded")
        if settings.captions_on:  # the re-ranker's summaries and candidates read the captions
            wait_until(lambda: worker.metric("captions_total") >= len(catalog), timeout=4 * 3600, interval=1.0,
                       message=f"the catalog's {len(catalog)} captions")
        timings["catalog"] = time.time() - t0

        delta = time.time() - schemas.parse_time(test[0]["event_time"]).timestamp() if test else 0.0
        t0 = time.time()
        report = replay(bootstrap, settings.topic_interactions, [shifted(e, delta) for e in backfill],
                        backfill=True, progress=True)
        wait_until(lambda: worker.metric("events_applied_total") >= len(backfill)
                   and worker.metric("backfill_markers_total") >= report.markers, timeout=1800, interval=1.0,
                   message="backfill applied")
        owed = Counter(e["user_id"] for e in backfill)  # every user the backfill touched is owed a list
        wait_until(lambda: all(watcher.latest.get(u, {}).get("interaction_count", 0) >= n for u, n in owed.items()),
                   timeout=1800, interval=0.5, message="the lists owed at the backfill's end")
        if settings.summaries_on:  # re-ranked lists need the summaries the backfill owes
            blocks = sum(n // settings.summary_block for n in owed.values())
            wait_until(lambda: worker.metric("summaries_total") >= blocks, timeout=3 * 3600, interval=1.0,
                       message=f"the backfill's {blocks} summaries")
        timings["backfill"] = time.time() - t0
        log(f"backfill: {len(backfill)} events in {timings['backfill']:.0f}s, {watcher.count} lists")

        tally = test_window(config, test, backfill, scored, catalog, bootstrap, settings, watcher, delta, tqdm)
        timings["test_window"] = time.time() - t0 - timings["backfill"]
        counters = {name: worker.metric(name) for name in WORKER_COUNTERS}
    finally:
        watcher.close()
        worker.stop()
        if broker is not None:
            broker.stop()
    result = {
        "stream": tally.stream.summary(len(catalog)), "popularity": tally.popularity.summary(len(catalog)),
        "candidate_stage": tally.candidate_stage.summary(len(catalog)),
        f"popularity_{config.recent_days:g}d": tally.recent_popularity.summary(len(catalog)),
        "events_scored": tally.stream.n, "events_without_list": tally.without_list, "list_timeouts": tally.timeouts,
        "strategies": {k: v / max(tally.stream.n, 1) for k, v in tally.strategies.most_common()},
        "sources_in_scored_lists": dict(tally.sources.most_common()),
        "split": {"users": len({e["user_id"] for e in events}), "backfill_events": len(backfill), "test_events": len(test), "test_users": len(test_users),
                  "scored_users": len(scored)},
        "config": asdict(config), "worker_settings": {k: relative_to_run(v, out_dir) for k, v in overrides.items()},
        "worker_counters": counters, "fitted": fitted, "seconds": {**{k: round(v, 1) for k, v in timings.items()},
                                      "total": round(time.time() - started, 1)},
    }
    ratio = result["stream"][f"HR@{config.k}"] / max(result["popularity"][f"HR@{config.k}"], 1e-9)
    result["hr_ratio_stream_over_popularity"] = round(ratio, 3)
    recent = result[f"popularity_{config.recent_days:g}d"][f"HR@{config.k}"]
    result[f"hr_ratio_stream_over_popularity_{config.recent_days:g}d"] = round(
        result["stream"][f"HR@{config.k}"] / max(recent, 1e-9), 3)
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "events.jsonl").write_text("".join(json.dumps(row) + "\n" for row in tally.scored))
    (out_dir / "results.md").write_text(markdown(result, config.k))
    return result


def test_window(config, test, backfill, scored, catalog, bootstrap, settings, watcher, delta, tqdm) -> Tally:
    from streams.kafka.client import InteractionProducer

    k = config.k
    tally = Tally(Scores(k), Scores(k), Scores(k), Scores(k))
    counts: Counter = Counter(e["item_id"] for e in backfill if e["item_id"] in catalog)
    recent = RecentCounts(config.recent_days * 86400.0)
    for e in backfill:
        if e["item_id"] in catalog:
            recent.add(e)
    cache = {"counts_version": 0}
    histories: dict[str, set[str]] = {}
    applied: Counter = Counter()
    for e in backfill:
        histories.setdefault(e["user_id"], set()).add(e["item_id"])
        applied[e["user_id"]] += 1
    producer = InteractionProducer(bootstrap, settings.topic_interactions, **{"linger.ms": 0})
    for event in tqdm(test, desc="test window", unit="ev"):
        user, item = event["user_id"], event["item_id"]
        if user in scored:
            rec = None
            if applied[user]:
                producer.flush()
                rec = watcher.wait_for(user, applied[user], config.wait_seconds)
                tally.timeouts += rec is None
            ranked = [] if rec is None else [i["item_id"] for i in rec["items"]]
            before_rerank = ranked if rec is None else (rec.get("rerank") or {}).get("candidate_top", ranked)
            if rec is None:
                tally.without_list += 1
            else:
                tally.strategies[rec.get("strategy", "?")] += 1
                for entry in rec["items"]:
                    tally.sources.update(entry.get("sources", []))
            popular = popularity_list(counts, histories.get(user, set()), k, cache)
            recently_popular = recent.top(event, histories.get(user, set()), k)
            tally.recent_popularity.add(recently_popular, item)
            tally.stream.add(ranked, item)
            tally.candidate_stage.add(before_rerank, item)
            tally.popularity.add(popular, item)
            tally.scored.append({"user_id": user, "item_id": item, "stream_rank": rank_within(ranked, item, k),
                                 "popularity_rank": rank_within(popular, item, k),
                                 "recent_popularity_rank": rank_within(recently_popular, item, k),
                                 "candidate_stage_rank": rank_within(before_rerank, item, k),
                                 "strategy": None if rec is None else rec.get("strategy"),
                                 "list_interaction_count": None if rec is None else rec.get("interaction_count")})
        producer.send(shifted(event, delta))
        applied[user] += 1
        histories.setdefault(user, set()).add(item)
        if item in catalog:
            counts[item] += 1
            cache["counts_version"] += 1
            recent.add(event)
    producer.flush()
    return tally


def train_sequential(events: list[dict], out: Path, config: StreamEvalConfig, log) -> float:
    from models.candidates.sequential import train_into

    return train_into(out, events, SequentialSourceConfig(epochs=config.sasrec_epochs),
                      until=events[-1]["event_time"] if events else None, echo=log)


def reranker_settings(adapter: str, llm: str) -> dict:
    """The worker settings that serve ``adapter`` as it was trained: ``llm`` captions, summarizes
    and scores, with the block and generation lengths of the adapter's protocol (a worker that
    writes other texts serves it out of its training distribution: ``text_mismatches``)."""
    from models.llm.serving import read_metadata
    from streams.hosting import trained_text_settings

    return {"summary_model": llm, "caption_model": llm, "recommender_model": llm,
            "recommender_adapter": str(Path(adapter).resolve()), **trained_text_settings(read_metadata(adapter))}


def check_trained_before(directory: str, first_test_time: str | None) -> None:
    """A given sequential model must not have seen the test window (its metadata says until when)."""
    from models.candidates.sequential import METADATA

    metadata = json.loads((Path(directory) / METADATA).read_text())
    until = (metadata.get("data") or {}).get("until")
    if first_test_time is None:
        return
    if not until or schemas.parse_time(until) > schemas.parse_time(first_test_time):
        raise ValueError(f"sequential model {directory} was trained on events until {until or 'an unknown time'}, "
                         f"after the test window's start ({first_test_time}); train it with --until")


def relative_to_run(value, out_dir: Path):
    """A path inside the run's directory as written relative to it, so results.json still names the
    right model after the directory is moved or committed (it named a /tmp path before)."""
    if isinstance(value, str) and value.startswith(f"{out_dir}/"):
        return value[len(str(out_dir)) + 1:]
    return value


def clear_previous_run(out_dir: Path) -> None:
    """A run's broker, worker state and log are scratch: a second run into the same directory
    starts from none of them (Faust keeps table offsets per data directory, not per app id, and
    refused the new run's empty changelogs)."""
    import shutil

    from streams.kafka.launcher import LocalKafka

    LocalKafka(out_dir / "kafka").stop()
    for scratch in ("kafka", "worker"):
        shutil.rmtree(out_dir / scratch, ignore_errors=True)
    (out_dir / "worker.log").unlink(missing_ok=True)


def fit_blend_weights(items: list[dict], backfill: list[dict], config: StreamEvalConfig, out_dir: Path,
                      cooccurrence, log) -> dict:
    """Weights fitted on the last ``validation_fraction`` of the backfill, by an offline replay of
    the same sources; the sequential model used there is trained on the events before that window."""
    from models.evaluation.prequential import fit_weights

    start = time_split(backfill, config.validation_fraction)
    sequential = None
    if config.sequential:
        train_sequential(backfill[:start], out_dir / "sequential-validation", config, log)
        sequential = out_dir / "sequential-validation"
    lists, targets = offline_lists(items, backfill, start, len(backfill), cooccurrence, sequential)
    weights, result = fit_weights(lists, targets)
    log(f"fitted weights on {len(targets)} validation events: {weights} (HR@10 {result['HR@10']:.4f})")
    return {"weights": weights, "validation": result, "validation_events": len(targets)}


def offline_lists(items: list[dict], events: list[dict], start: int, end: int, cooccurrence,
                  sequential: Path | None) -> tuple[dict, list]:
    """Every source's ranked lists before each of ``events[start:end]`` (``models.evaluation.prequential``),
    the sequential source served from the model directory ``sequential`` (None: left out)."""
    from models.embeddings import TextEmbedder
    from models.evaluation.prequential import content_source, proposed, replay as offline_replay
    from models.candidates.sequential import SequentialRetriever

    embedder = TextEmbedder("minilm", device="cpu")
    extra = {"content": content_source(lambda texts: embedder.embed(texts), {i["item_id"]: i for i in items})}
    if sequential is not None:
        model = SequentialRetriever.from_pretrained(sequential)
        extra["sequential"] = lambda user, history, n: proposed(model, history, n)
        if model.ease is not None:
            extra["ease"] = lambda user, history, n: proposed(model.ease, history, n)
    return offline_replay(events, start, end, cooccurrence, extra, progress=True)


def guard_line(counters: dict) -> list[str]:
    """What the offset guard had to read from the broker, where the run reports it."""
    if "stalled_catch_ups_total" not in counters:
        return []
    return [f"Offset guard: {counters['stalled_catch_ups_total']:.0f} stalled-partition catch-ups, "
            f"{counters['offsets_recovered_total']:.0f} records read from the broker, "
            f"{counters['catch_up_errors_total']:.0f} catch-up errors."]


def markdown(result: dict, k: int) -> str:
    rows = [f"| lists | HR@{k} | NDCG@{k} | MRR@{k} | coverage |", "|---|---|---|---|---|"]
    for name in ("stream", "candidate_stage", "popularity",
                 *[key for key in result if key.startswith("popularity_") and isinstance(result[key], dict)]):
        r = result[name]
        rows.append(f"| {name} | {r[f'HR@{k}']:.4f} | {r[f'NDCG@{k}']:.4f} | {r[f'MRR@{k}']:.4f} | "
                    f"{r.get('coverage', 0):.3f} |")
    lines = ["# mmsr eval-stream", "", *rows, "",
             f"Events scored: {result['events_scored']} (without a list: {result['events_without_list']}, "
             f"timeouts: {result['list_timeouts']}); HR@{k} stream / popularity: "
             f"{result['hr_ratio_stream_over_popularity']}x"
             + "".join(f"; over {key.removeprefix('hr_ratio_stream_over_')}: {value}x" for key, value in result.items()
                       if key.startswith("hr_ratio_stream_over_popularity_")) + ".",
             f"Strategies of the scored lists: {json.dumps(result['strategies'])}.",
             f"Sources of the items in the scored lists: {json.dumps(result['sources_in_scored_lists'])}.",
             f"Seconds: {json.dumps(result['seconds'])}.",
             *guard_line(result.get("worker_counters", {})), ""]
    return "\n".join(lines)
