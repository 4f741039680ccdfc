"""Recommendations stage: owed lists are built (candidate stage, then the re-ranker) and published.

A list is owed while the user's state names its trigger (``UserState.owed``); only after the
broker has acknowledged the list is the mark cleared, so a crash in between re-sends the list
(at-least-once: a consumer keeps the newest per user) and never loses it.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time

from models.llm import pipeline
from models.candidates.blend import Fused, fuse
from models.candidates.cooccurrence import neighbour_scores
from models.candidates.retrieval import user_vector
from streams.events import Trigger, utcnow
from streams.hosting import MODEL_ERRORS
from streams.services import Services
from streams.threads import read_concurrently
from streams.state import UserState

log = logging.getLogger(__name__)


def list_record(state: UserState, ranked: list[tuple[str, float, tuple[str, ...]]], strategy: str, model: str,
                summary_version: int, trigger: Trigger, **extra) -> dict:
    latency = None if trigger.broker_timestamp is None else (time.time() - trigger.broker_timestamp) * 1000
    return {
        "user_id": state.user_id,
        "items": [{"item_id": item_id, "score": round(score, 6), "rank": r, "sources": list(sources)}
                  for r, (item_id, score, sources) in enumerate(ranked, 1)],
        "summary_version": summary_version,
        "interaction_count": state.interaction_count,
        "model": model,
        "strategy": strategy,
        "generated_at": utcnow(),
        "trigger": trigger.to_dict(),
        "latency_ms": None if latency is None else round(latency, 3),
        **extra,
    }


def fusion_features(hits: list[Fused], cooccurrence: dict[str, float], counts) -> list[dict]:
    """What the fused score reads of each candidate from the candidate stage."""
    return [{"cooccurrence": cooccurrence.get(h.item_id, 0.0), "log_popularity": math.log1p(counts.get(h.item_id, 0))}
            for h in hits]


def score_batch(services: Services, requests: list, features: list[list[dict]]):
    """The batched re-ranker call with one adapter pinned for all of it, timed and counted; runs
    in a thread. With the adapter's fused score, the scores are its calibrated probabilities.
    (scores per request, the recommender that scored, seconds)"""
    started = time.perf_counter()
    scores, recommender = services.models.reranker.score(requests)
    if recommender.fusion is not None:
        scores = [recommender.fusion.rerank(recommender, r, score, f) for r, score, f in zip(requests, scores, features)]
    seconds = time.perf_counter() - started
    services.metrics.inc("rerank_seconds_total", seconds)
    services.metrics.inc("reranked_candidates_total", sum(len(r.candidates) for r in requests))
    return scores, recommender, seconds


def reranked_list(state: UserState, trigger: Trigger, rows: list[tuple[str, tuple]], scores: list[float], recommender,
                  k: int, versions: dict, batch_users: int, seconds: float) -> dict:
    """The re-ranker's list: candidates by p(Yes) (or the fused score), the same record whichever role scored them.

    ``rows`` come in the candidate stage's order; its top k ride along (``rerank.candidate_top``),
    so a consumer sees what the re-ranker changed, and `mmsr eval-stream` scores both orders of the
    same lists."""
    ranked = sorted(((item_id, score, sources) for (item_id, sources), score in zip(rows, scores)),
                    key=lambda row: -row[1])
    return list_record(state, ranked[:k], "rerank", f"{recommender.lm.name}+{recommender.version}",
                       state.summary_version, trigger, base_model=recommender.lm.name,
                       adapter_version=recommender.version, versions=versions,
                       scoring="fused" if recommender.fusion is not None else "llm",
                       collab_sequential=None if recommender.collab is None else recommender.collab.version,
                       rerank={"candidates": len(rows), "batch_users": batch_users, "seconds": round(seconds, 4),
                               "candidate_top": [item_id for item_id, _ in rows[:k]]})


class RecommendationsStage:
    def __init__(self, services: Services):
        self.services = services

    def candidates(self, states: list[UserState], k: int) -> list[tuple[str, list[Fused], list[dict]]]:
        """The candidate stage for several users: each source's top N, blended, and what the fused
        score reads of each candidate (run in a thread)."""
        settings, index = self.services.settings, self.services.catalog.index
        if index is None:
            return [("trending", [], []) for _ in states]
        n, weights = settings.source_candidates, settings.blend_weights()
        excluded = [set(st.seen) for st in states]
        sequential = self.services.models.sequential
        proposed_by_model = proposed_by_ease = None
        if sequential is not None and weights["sequential"] > 0:
            proposed_by_model = sequential.top_k([st.recent_items(sequential.config.max_len) for st in states], n,
                                                 excluded)
        if sequential is not None and sequential.ease is not None and weights["ease"] > 0:
            proposed_by_ease = sequential.ease.top_k([st.seen for st in states], n, excluded)
        out = []
        for u, state in enumerate(states):
            ranked: dict[str, list[str]] = {}
            recent = state.recent_items(settings.cooc_window)
            scores: dict[str, float] = {}
            if weights["cooccurrence"] > 0 and recent:
                records = read_concurrently(lambda: {r: self.services.neighbours.get(r) for r in recent})
                scores = neighbour_scores(recent, records, self.services.item_stats.counts, excluded[u],
                                          settings.cooc_query_half_life)
                ranked["cooccurrence"] = [i for i in sorted(scores, key=lambda i: (-scores[i], i)) if i in index][:n]
            for name, proposed in (("sequential", proposed_by_model), ("ease", proposed_by_ease)):
                if proposed is not None:
                    ranked[name] = [i for i, _ in proposed[u] if i in index]
            query = user_vector(index, state.recent_items(settings.recent_for_vector), settings.recency_half_life)
            if weights["content"] > 0 and query is not None:
                ranked["content"] = [h.item_id for h in index.top_k(query, n, exclude=excluded[u])]
            if weights["trending"] > 0:
                ranked["trending"] = [h.item_id for h in
                                      self.services.item_stats.trending.top_k(n, exclude=excluded[u], allowed=index)]
            fused = fuse(ranked, weights, k, settings.rrf_k, excluded[u])
            out.append(("blend" if state.history else "trending", fused,
                        fusion_features(fused, scores, self.services.item_stats.counts)))
        return out

    def collab_history(self, state: UserState) -> list[str]:
        """The recent items collaborative tokens read (the sequential model's window)."""
        sequential = self.services.models.sequential
        return state.recent_items(sequential.config.max_len if sequential is not None else self.services.settings.cooc_window)

    def versions(self) -> dict:
        """The models a candidate list was built with."""
        sequential = self.services.models.sequential
        return {"sequential": None if sequential is None else sequential.version,
                "embedding": self.services.settings.embed_model,
                "cooccurrence_window": self.services.settings.cooc_window if self.services.settings.cooccurrence else 0}

    def owed_states(self, users: list[str], assigned: set[int] | None) -> list[tuple[UserState, Trigger]]:
        out = []
        user_state = self.services.user_state.anywhere()  # the owed users' partitions are not known here
        for user_id in users:
            data = user_state.get(user_id)
            if not data or not data.get("owed"):
                continue  # emitted already (a duplicate schedule) or not this worker's user
            state = UserState.from_dict(data, user_id)
            if assigned is not None and state.partition not in assigned:
                continue  # the partition moved: its new owner emits the list
            out.append((state, Trigger.from_state(state.owed)))
        return out

    async def emit_due(self, assigned: set[int] | None = None) -> int:
        """Build and publish every list that is due; the number published."""
        users = self.services.due.pop_due()
        self.services.metrics.gauge("lists_pending", len(self.services.due))
        if not users:
            return 0
        owed = self.owed_states(users, assigned)
        if not owed:
            return 0
        settings = self.services.settings
        reranker = self.services.models.reranker
        rerank = [(st, t) for st, t in owed if reranker is not None and st.summary]
        plain = [(st, t) for st, t in owed if not (reranker is not None and st.summary)]
        records, requests = [], []
        if plain:
            asking = settings.role == "state" and settings.reranking_on  # the llm role re-ranks; these lists come first
            k = max(settings.top_k, settings.rerank_candidates) if asking else settings.top_k
            lists = await self.services.off_loop(self.candidates, [st for st, _ in plain], k, pool="lists")
            records += [self.candidate_list(st, t, strategy, hits[:settings.top_k])
                        for (st, t), (strategy, hits, _) in zip(plain, lists)]
            if asking:
                requests = [self.rerank_request(st, t, hits, features)
                            for (st, t), (_, hits, features) in zip(plain, lists) if st.summary]
        step = settings.rerank_users
        for start in range(0, len(rerank), step):
            records += await self.rerank(rerank[start:start + step])
        await self.services.publisher.recommendations([record for record, _ in records])
        if requests:  # acknowledged before the owed marks are cleared: a crash sends them again
            pending = [await self.services.publisher.send("rerank_requests", r["user_id"], r) for r in requests]
            await asyncio.gather(*pending)
            self.services.metrics.inc("rerank_requests_total", len(requests))
        for _, (state, trigger) in records:
            self.settle(state, trigger)
        return len(records)

    def candidate_list(self, state: UserState, trigger: Trigger, strategy: str, hits: list[Fused]) -> tuple[dict, tuple]:
        record = list_record(state, [(h.item_id, h.score, h.sources) for h in hits], strategy, "candidates:blend",
                             state.summary_version, trigger, versions=self.versions())
        return record, (state, trigger)

    def rerank_request(self, state: UserState, trigger: Trigger, hits: list[Fused], features: list[dict]) -> dict:
        """Role state: all the llm role needs to re-rank this list (it holds no state)."""
        profiles, fields = self.services.item_profiles, ("title", "categories", "description", "caption", "caption_rejected")
        return {"user_id": state.user_id, "summary": state.summary, "summary_version": state.summary_version,
                "interaction_count": state.interaction_count, "trigger": trigger.to_state(), "versions": self.versions(),
                "history": self.collab_history(state),
                "candidates": [{"item_id": h.item_id, "score": h.score, "sources": list(h.sources), "features": f,
                                **{k: (profiles.get(h.item_id) or {}).get(k) for k in fields}}
                               for h, f in zip(hits, features)]}

    def settle(self, state: UserState, trigger: Trigger) -> None:
        """The list is on the broker: clear the owed mark, unless a newer event has owed another."""
        user_state = self.services.user_state.at(state.partition)
        data = user_state.get(state.user_id)
        if data and data.get("owed") == trigger.to_state():
            user_state[state.user_id] = {**data, "owed": None}

    async def rerank(self, jobs: list[tuple[UserState, Trigger]]) -> list[tuple[dict, tuple]]:
        """Re-rank the candidate stage's top N for each job in one batched call across users.

        Text candidates only: fetching every candidate's image for every list would put the
        network in the scoring path; captions carry the images' content. If the model fails, the
        batch gets candidate-stage lists.
        """
        settings = self.services.settings
        lists = await self.services.off_loop(self.candidates, [st for st, _ in jobs], settings.rerank_candidates, pool="lists")
        profiles = self.services.item_profiles
        requests = [pipeline.preference_request(st.summary, [pipeline.candidate(profiles.get(h.item_id), h.item_id)
                                                             for h in hits], self.collab_history(st))
                    for (st, _), (_, hits, _) in zip(jobs, lists)]
        try:
            scores, recommender, seconds = await self.services.off_loop(score_batch, self.services, requests,
                                                                 [features for _, _, features in lists])
        except MODEL_ERRORS as exc:  # the model must not stop the stream: fall back to candidate lists
            log.exception("re-ranking failed for %d users: %s", len(jobs), exc)
            self.services.metrics.inc("rerank_failures_total")
            return [self.candidate_list(st, t, strategy, hits[:settings.top_k])
                    for (st, t), (strategy, hits, _) in zip(jobs, lists)]
        return [(reranked_list(state, trigger, [(h.item_id, h.sources) for h in hits], user_scores, recommender,
                               settings.top_k, self.versions(), len(jobs), seconds), (state, trigger))
                for (state, trigger), (_, hits, _), user_scores in zip(jobs, lists, scores)]
