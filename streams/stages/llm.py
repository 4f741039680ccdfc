"""The llm role: summaries and re-ranked lists from request topics, with no user state.

Each request carries everything its answer needs (the state role built it), so any number of
llm workers in their own consumer group can answer, on GPUs where present. A summary request's
answers carry versions (base + 1, base + 2, ...); the state role applies them only in order,
so a redelivered request cannot move a user's summary backwards. A failed model call answers
nothing: the state role asks again after its timeout, and users keep their candidate lists.
"""
from __future__ import annotations

import logging

import schemas
from models.llm import pipeline
from streams.events import Trigger
from streams.hosting import MODEL_ERRORS
from streams.services import Services
from streams.stages.interactions import summarize_isolated, summary_event
from streams.stages.recommendations import reranked_list, score_batch
from streams.state import UserState

log = logging.getLogger(__name__)


async def requests_of(services: Services, events, kind: str) -> list[dict]:
    """The requests of a batch, each validated against its schema (``schemas/{kind}.schema.json``):
    a request from a state worker of another version, or written by hand, is dead-lettered with the
    field named, instead of raising out of the agent."""
    out = []
    for event in events:
        try:
            out.append(schemas.parse(kind, event.message.value))
        except schemas.InvalidEvent as error:
            await services.publisher.dead_letter(event.message, error.kind, str(error))
    return out


class SummaryRequestsStage:
    def __init__(self, services: Services):
        self.services = services

    async def process(self, events) -> None:
        """Every request's blocks, recurrently, batched across users; one summary event per block."""
        settings, metrics = self.services.settings, self.services.metrics
        requests = await requests_of(self.services, events, "summary_request")
        if not requests:
            return
        inputs = [([t for block in r["blocks"] for t in block["texts"]], r["summary"]) for r in requests]
        results, failures = await summarize_isolated(self.services, inputs)
        pending = []
        for n, (request, summaries) in enumerate(zip(requests, results)):
            if n in failures:
                continue
            for i, (block, summary) in enumerate(zip(request["blocks"], summaries), 1):
                event = summary_event(settings, request["user_id"], request["partition"], request["base_version"] + i,
                                      summary, block["entries"], request["covered"] + i * settings.summary_block, None)
                pending.append(await self.services.publisher.send("user_summaries", request["user_id"], event))
                metrics.inc("summaries_total")
        for future in pending:
            await future


class RerankRequestsStage:
    def __init__(self, services: Services):
        self.services = services

    async def process(self, events) -> None:
        """Score each request's candidates in one batched call and publish the re-ranked lists."""
        settings, metrics = self.services.settings, self.services.metrics
        jobs = await requests_of(self.services, events, "rerank_request")
        if not jobs:
            return
        requests = [pipeline.preference_request(job["summary"], [pipeline.candidate(c, c["item_id"])
                                                                 for c in job["candidates"]], job.get("history") or ())
                    for job in jobs]
        features = [[c.get("features") or {} for c in job["candidates"]] for job in jobs]
        try:
            scores, recommender, seconds = await self.services.off_loop(score_batch, self.services, requests, features)
        except MODEL_ERRORS as exc:  # the users keep the candidate lists the state role published
            log.exception("re-ranking failed for %d users: %s", len(jobs), exc)
            metrics.inc("rerank_failures_total")
            return
        records = []
        for job, user_scores in zip(jobs, scores):
            state = UserState(job["user_id"], interaction_count=job["interaction_count"],
                              summary_version=job["summary_version"])
            rows = [(c["item_id"], tuple(c.get("sources") or ())) for c in job["candidates"]]
            records.append(reranked_list(state, Trigger.from_state(job["trigger"]), rows, user_scores, recommender,
                                         settings.top_k, job.get("versions") or {}, len(jobs), seconds))
        await self.services.publisher.recommendations(records)
