"""Recommendations stage: owed lists are built (candidate stage, then the re-ranker) and published.

A list is owed while the user's state names its trigger (``UserState.owed``); only after the
broker has acknowledged the list is the mark cleared, so a crash in between re-sends the list
(at-least-once: a consumer keeps the newest per user) and never loses it.
"""
from __future__ import annotations

import logging
import time

from models import pipeline
from models.retrieval import recommend
from streams.events import Trigger, in_partition, utcnow
from streams.services import MODEL_ERRORS, Services
from streams.state import UserState

log = logging.getLogger("mmsr.worker")


def list_record(state: UserState, ranked: list[tuple[str, float]], strategy: str, model: str, summary_version: int,
                trigger: Trigger, **extra) -> dict:
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


class RecommendationsStage:
    def __init__(self, services: Services):
        self.s = services

    def candidates(self, states: list[UserState], k: int) -> list[tuple[str, list]]:
        """The candidate stage for several users (matrix products: run in a thread)."""
        s, catalog = self.s.settings, self.s.catalog
        if catalog.index is None:
            return [("popularity", []) for _ in states]
        return [recommend(catalog.index, catalog.popularity, st.recent_items(s.recent_for_vector), st.seen, k,
                          s.recency_half_life) for st in states]

    def owed_states(self, users: list[str], assigned: set[int] | None) -> list[tuple[UserState, Trigger]]:
        out = []
        for user_id in users:
            data = self.s.user_state.get(user_id)
            if not data or not data.get("owed"):
                continue  # emitted already (a duplicate schedule) or not this worker's user
            state = UserState.from_dict(data, user_id)
            if assigned is not None and state.partition not in assigned:
                continue  # the partition moved: its new owner emits the list
            out.append((state, Trigger.from_state(state.owed)))
        return out

    async def emit_due(self, assigned: set[int] | None = None) -> int:
        """Build and publish every list that is due; the number published."""
        users = self.s.due.pop_due()
        self.s.metrics.gauge("lists_pending", len(self.s.due))
        if not users:
            return 0
        owed = self.owed_states(users, assigned)
        if not owed:
            return 0
        s = self.s.settings
        reranker = self.s.models.reranker
        rerank = [(st, t) for st, t in owed if reranker is not None and st.summary]
        plain = [(st, t) for st, t in owed if not (reranker is not None and st.summary)]
        records = []
        if plain:
            lists = await self.s.off_loop(self.candidates, [st for st, _ in plain], s.top_k)
            records += [self.candidate_list(st, t, strategy, hits) for (st, t), (strategy, hits) in zip(plain, lists)]
        step = s.rerank_users
        for start in range(0, len(rerank), step):
            records += await self.rerank(rerank[start:start + step])
        for record, (state, trigger) in records:
            await self.s.publisher.recommendation(record)
            self.settle(state, trigger)
        return len(records)

    def candidate_list(self, state: UserState, trigger: Trigger, strategy: str, hits) -> tuple[dict, tuple]:
        record = list_record(state, [(h.item_id, h.score) for h in hits], strategy,
                             f"retrieval:{self.s.settings.embed_model}", state.summary_version, trigger)
        return record, (state, trigger)

    def settle(self, state: UserState, trigger: Trigger) -> None:
        """The list is on the broker: clear the owed mark, unless a newer event has owed another."""
        in_partition(self.s.settings.topic_interactions, state.partition)
        data = self.s.user_state.get(state.user_id)
        if data and data.get("owed") == trigger.to_state():
            self.s.user_state[state.user_id] = {**data, "owed": None}

    def score(self, requests: list):
        """The batched re-ranker call with one adapter pinned for all of it; runs in a thread."""
        started = time.perf_counter()
        scores, recommender = self.s.models.reranker.score(requests)
        return scores, recommender, time.perf_counter() - started

    async def rerank(self, jobs: list[tuple[UserState, Trigger]]) -> list[tuple[dict, tuple]]:
        """Re-rank the candidate stage's top N for each job in one batched call across users.

        Text candidates only: fetching every candidate's image for every list would put the
        network in the scoring path; captions carry the images' content. If the model fails, the
        batch gets candidate-stage lists.
        """
        s = self.s.settings
        lists = await self.s.off_loop(self.candidates, [st for st, _ in jobs], s.rerank_candidates)
        profiles = self.s.item_profiles
        requests = [pipeline.preference_request(st.summary, [pipeline.candidate(profiles.get(h.item_id), h.item_id)
                                                             for h in hits])
                    for (st, _), (_, hits) in zip(jobs, lists)]
        try:
            scores, recommender, seconds = await self.s.off_loop(self.score, requests)
        except MODEL_ERRORS as exc:  # the model must not stop the stream: fall back to candidate lists
            log.exception("re-ranking failed for %d users: %s", len(jobs), exc)
            self.s.metrics.inc("rerank_failures_total")
            return [self.candidate_list(st, t, strategy, hits[:s.top_k])
                    for (st, t), (strategy, hits) in zip(jobs, lists)]
        self.s.metrics.inc("rerank_seconds_total", seconds)
        self.s.metrics.inc("reranked_candidates_total", sum(len(r.candidates) for r in requests))
        out = []
        for (state, trigger), (_, hits), user_scores in zip(jobs, lists, scores):
            ranked = sorted(zip((h.item_id for h in hits), user_scores), key=lambda pair: -pair[1])
            record = list_record(
                state, ranked[:s.top_k], "rerank", f"{recommender.lm.name}+{recommender.version}",
                state.summary_version, trigger, base_model=recommender.lm.name, adapter_version=recommender.version,
                rerank={"candidates": len(hits), "batch_users": len(jobs), "seconds": round(seconds, 4)})
            out.append((record, (state, trigger)))
        return out
