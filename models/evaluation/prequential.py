"""Offline prequential replay of the candidate stage, with the stream's own source and blend code.

Events are replayed in time order; each event in a window is scored against the lists the
sources (and their blend) would give the user from everything before it, the user's history
excluded. The stream measure is ``mmsr eval-stream`` (a real broker and worker); this offline
replay uses the same functions (``models.candidates.cooccurrence``, ``models.candidates.blend``, the SASRec retriever,
the content index) to fit the blend weights on a validation window quickly, and to report every
source alone on the same events.
"""
from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import numpy as np

import schemas
from models.candidates.blend import SOURCES, fuse
from models.config import EaseConfig, SequentialSourceConfig
from models.candidates.cooccurrence import CooccurrenceConfig, apply_entries, neighbour_scores, pair_entries, trend_key


def rank_within(ranked: list[str], target: str, k: int) -> int:
    """The target's 1-based rank among the first k (0: not there)."""
    try:
        return ranked.index(target, 0, k) + 1
    except ValueError:
        return 0


def proposed(model, history: list[str], n: int) -> list[str]:
    """A trained source's (SASRec's, EASE's) top ``n`` item ids after ``history``, the history excluded."""
    return [i for i, _ in model.top_k([history], n, [set(history)])[0]]


def hit_metrics(ranked: list[str], target: str, k: int) -> tuple[float, float, float]:
    """(HR@k, NDCG@k, MRR@k) of one event against one list."""
    rank = rank_within(ranked, target, k)
    if not rank:
        return 0.0, 0.0, 0.0
    return 1.0, 1.0 / math.log2(rank + 1), 1.0 / rank


@dataclass
class Scores:
    """Sums of per-event metrics; ``summary`` averages them."""

    k: int = 10
    n: int = 0
    hr: float = 0.0
    ndcg: float = 0.0
    mrr: float = 0.0
    items: set = field(default_factory=set)

    def add(self, ranked: list[str], target: str) -> None:
        hr, ndcg, mrr = hit_metrics(ranked, target, self.k)
        self.n += 1
        self.hr, self.ndcg, self.mrr = self.hr + hr, self.ndcg + ndcg, self.mrr + mrr
        self.items.update(ranked[:self.k])

    def summary(self, catalog_size: int | None = None) -> dict:
        n = max(self.n, 1)
        out = {f"HR@{self.k}": self.hr / n, f"NDCG@{self.k}": self.ndcg / n, f"MRR@{self.k}": self.mrr / n,
               "events": self.n}
        if catalog_size:
            out["coverage"] = len(self.items) / catalog_size
        return out


class SourceState:
    """What the candidate sources know after the events so far (the stream's aggregates, offline)."""

    def __init__(self, config: CooccurrenceConfig):
        self.config = config
        self.records: dict[str, dict] = {}
        self.counts: Counter[str] = Counter()
        self.histories: dict[str, list[str]] = {}
        self.offset = 0

    def apply(self, event: dict) -> None:
        self.apply_item(event["user_id"], event["item_id"], schemas.parse_time(event["event_time"]).timestamp())

    def apply_item(self, user: str, item: str, ts: float = 0.0) -> None:
        history = self.histories.setdefault(user, [])
        for target, entry in pair_entries(history, item, 0, self.offset, ts, self.config).items():
            self.records[target], _ = apply_entries(self.records.get(target), [entry], self.config)
            self.counts[target] = self.records[target]["count"]
        self.offset += 1
        history.append(item)  # repeats kept, as in the stream's user history (pairs skip them)

    def cooccurrence(self, user: str, n: int) -> list[str]:
        scores = self.cooccurrence_scores(self.histories.get(user, []))
        return sorted(scores, key=lambda i: (-scores[i], i))[:n]

    def cooccurrence_scores(self, history: list[str]) -> dict[str, float]:
        """The co-occurrence source's scores for a user with this history (oldest first), history excluded."""
        recent = history[-self.config.window:] if self.config.window > 0 else []
        return neighbour_scores(recent, self.records, self.counts, set(history), self.config.query_half_life)

    def trending(self, user: str, n: int) -> list[str]:
        seen = set(self.histories.get(user, []))
        keys = ((i, trend_key(r, self.config.trending_half_life)) for i, r in self.records.items() if i not in seen)
        return [i for i, _ in sorted(keys, key=lambda kv: (-kv[1], kv[0]))[:n]]

    def popularity(self, user: str, n: int) -> list[str]:
        seen = set(self.histories.get(user, []))
        return [i for i, _ in sorted(((i, c) for i, c in self.counts.items() if i not in seen and c > 0),
                                     key=lambda kv: (-kv[1], kv[0]))[:n]]


def replay(events: list[dict], start: int, end: int, config: CooccurrenceConfig,
           extra_sources: Mapping[str, Callable[[str, list[str], int], list[str]]] | None = None,
           n: int = 100, k: int = 10, progress: bool = False) -> tuple[dict[str, list[str]], list]:
    """Apply ``events[:start]``, then for each event in [start, end): every source's top ``n`` for
    its user before it, then apply it. Returns the per-event ranked lists by source and the targets.

    ``extra_sources``: name -> f(user, history, n) (the sequential model and content similarity,
    which need models; co-occurrence, trending and popularity come from the replayed counts).
    """
    from tqdm.auto import tqdm

    state = SourceState(config)
    for event in events[:start]:
        state.apply(event)
    lists: dict[str, list[list[str]]] = {name: [] for name in (*SOURCES, "popularity")}
    targets = []
    for event in tqdm(events[start:end], desc="prequential", disable=not progress):
        user = event["user_id"]
        history = state.histories.get(user, [])
        lists["cooccurrence"].append(state.cooccurrence(user, n))
        lists["trending"].append(state.trending(user, n))
        lists["popularity"].append(state.popularity(user, k))
        for name, source in (extra_sources or {}).items():
            lists[name].append(source(user, history, n) if history else [])
        targets.append((user, event["item_id"]))
        state.apply(event)
    return lists, targets


def score_blend(lists: Mapping[str, list[list[str]]], targets: list, weights: Mapping[str, float], k: int = 10,
                rrf_k: float = 60.0) -> dict:
    scores = Scores(k)
    for e, (_, target) in enumerate(targets):
        ranked = {name: lists[name][e] for name in SOURCES if lists.get(name) and lists[name]}
        scores.add([f.item_id for f in fuse(ranked, weights, k, rrf_k)], target)
    return scores.summary()


def fit_weights(lists: Mapping[str, list[list[str]]], targets: list, grid: Iterable[float] = (0.0, 0.05, 0.2, 0.6, 1.0),
                k: int = 10, *, rrf_k: float = 60.0) -> tuple[dict[str, float], dict]:
    """The grid point of weights (co-occurrence fixed at 1) with the best HR@k on these events."""
    present = [s for s in SOURCES if s != "cooccurrence" and lists.get(s) and any(lists[s])]
    best: tuple[float, dict, dict] | None = None
    for combo in itertools.product(list(grid), repeat=len(present)):
        weights = {"cooccurrence": 1.0, **dict(zip(present, combo))}
        result = score_blend(lists, targets, weights, k, rrf_k)
        key = (result[f"HR@{k}"], result[f"NDCG@{k}"])
        if best is None or key > best[0]:
            best = (key, weights, result)
    return best[1], best[2]


def time_split(events: list[dict], test_fraction: float) -> int:
    """Index of the first test event: the last ``test_fraction`` of events by time."""
    return int(round(len(events) * (1.0 - test_fraction)))


def content_source(embed: Callable[[list[str]], np.ndarray], items: Mapping[str, dict], half_life: float = 10.0,
                   recent: int = 20):
    """Content similarity as the stream computes it (recency-weighted user vector over item-text embeddings)."""
    from models.embeddings import item_text
    from models.candidates.retrieval import CatalogIndex, user_vector

    ids = sorted(items)
    vectors = embed([item_text(items[i]["title"], items[i].get("categories"), items[i].get("description"))
                     for i in ids])
    index = CatalogIndex(vectors.shape[1], capacity=len(ids))
    for i, v in zip(ids, vectors):
        index.upsert(i, v)

    def source(user: str, history: list[str], n: int) -> list[str]:
        query = user_vector(index, history[-recent:], half_life)
        return [] if query is None else [h.item_id for h in index.top_k(query, n, exclude=history)]

    return source


def full_catalog(events: list[dict], items: Mapping[str, dict], config: CooccurrenceConfig = CooccurrenceConfig(),
                 weights: Mapping[str, float] | None = None, *, sasrec_epochs: int = SequentialSourceConfig.epochs, embed=None, k: int = 10,
                 recall_at: int = 50, progress: bool = False, log=print) -> dict:
    """Leave-last-out over the full catalog, every source alone and blended, the history excluded.

    Each user's last event (by time) is held out; the sources are built from every other event in
    time order (co-occurrence, trending and popularity by replaying them, SASRec trained on the
    histories, content from the item texts) and rank the whole catalog for the user.
    """
    import time

    from models.candidates.ease import Ease
    from models.candidates.sequential import SequentialRetriever

    last: dict[str, int] = {}
    for n, e in enumerate(events):
        last[e["user_id"]] = n
    held = {n for n in last.values()}
    train = [e for n, e in enumerate(events) if n not in held]
    tests = [events[n] for n in sorted(held)]
    timings = {}
    started = time.time()
    state = SourceState(config)
    for e in train:
        state.apply(e)
    timings["counts"] = time.time() - started
    from models.candidates.sequences import sequences_of

    sequences = sequences_of(train)
    started = time.time()
    model = SequentialRetriever.train(sequences, SequentialSourceConfig(epochs=sasrec_epochs), progress=progress)
    timings["sasrec"] = time.time() - started
    started = time.time()
    ease = Ease.fit(sequences, EaseConfig())
    timings["ease"] = time.time() - started
    content = content_source(embed, items) if embed is not None else None
    depth = max(recall_at, 100)
    lists: dict[str, list[list[str]]] = {name: [] for name in (*SOURCES, "popularity")}
    for e in tests:
        user, history = e["user_id"], state.histories.get(e["user_id"], [])
        lists["cooccurrence"].append(state.cooccurrence(user, depth))
        lists["trending"].append(state.trending(user, depth))
        lists["popularity"].append(state.popularity(user, depth))
        lists["sequential"].append(proposed(model, history, depth))
        lists["ease"].append(proposed(ease, history, depth))
        lists["content"].append(content(user, history, depth) if content is not None and history else [])
    targets = [(e["user_id"], e["item_id"]) for e in tests]
    weights = dict(weights or {"cooccurrence": 1.0})
    table = {}
    for name in (*SOURCES, "popularity", "blend"):
        scores, recall = Scores(k), 0
        for n, (_, target) in enumerate(targets):
            if name == "blend":
                ranked = [f.item_id for f in fuse({s: lists[s][n] for s in SOURCES}, weights, depth)]
            else:
                ranked = lists[name][n]
            scores.add(ranked, target)
            recall += target in ranked[:recall_at]
        table[name] = {**scores.summary(len(items)), f"Recall@{recall_at}": recall / max(len(targets), 1)}
    return {"protocol": "full-catalog leave-last-out", "users": len(tests), "train_events": len(train),
            "blend_weights": weights, "sources": table, "seconds": {k_: round(v, 1) for k_, v in timings.items()}}
