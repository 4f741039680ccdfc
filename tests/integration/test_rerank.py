"""The re-ranker in the stream, on the real broker: summary event -> re-ranked list -> adapter swap."""
from __future__ import annotations

import pytest

from models import registry
from models.llm import prompts
from models.llm.recommender import Recommender
from models.llm.requests import Candidate, ScoreRequest
from models.config import SASRecConfig
from models.candidates.sequential import SequentialRetriever
from models.llm.serving import load_adapter
from streams.kafka.client import InteractionProducer, ItemProducer
from tests.adapters import fusion_of, make_adapter, make_collab_adapter
from tests.conftest import wait_until
from tests.integration import helpers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LLM = registry.SMOLLM2


def recommendations(env, user: str) -> list[dict]:
    return [r for r in helpers.topic_events(env, env.topic_recommendations, "recommendation") if r["user_id"] == user]


def test_summary_event_gives_a_reranked_list_and_a_new_adapter_changes_the_version(topic_factory, worker_factory,
                                                                                     tmp_path):
    adapter = tmp_path / "adapter"
    make_adapter(adapter, "v1", seed=1)
    sequences = {f"u{n}": [f"i{(n + j) % 24}" for j in range(8)] for n in range(30)}
    sasrec = SequentialRetriever.train(sequences, SASRecConfig(hidden=16, blocks=1, max_len=8, epochs=3, seed=0))
    sasrec.save_pretrained(tmp_path / "sequential")
    env = topic_factory(summary_model=LLM, summary_max_new_tokens=16, recommender_model=LLM,
                        recommender_adapter=str(adapter), rerank_candidates=12, top_k=5, adapter_poll_seconds=0.5,
                        retrieval_model=str(tmp_path / "sequential"))
    worker = worker_factory(env).start(timeout=600)
    items = helpers.catalog(24)
    with ItemProducer(env.bootstrap_servers, env.topic_items) as producer:
        for item in items:
            producer.send(item)
    wait_until(lambda: worker.metric("catalog_items") >= 24, timeout=120, message="catalog indexed")

    history = ["i0", "i6", "i12"]  # one block of B = 3: one summary, then one re-ranked list
    with InteractionProducer(env.bootstrap_servers, env.topic_interactions) as producer:
        for item in history:
            producer.interaction("u0", item, "click", helpers.now())
    first = wait_until(lambda: next(iter(r for r in recommendations(env, "u0") if r["strategy"] == "rerank"), None),
                       timeout=300, interval=1, message="re-ranked list")
    assert first["adapter_version"] == "v1" and first["base_model"] == LLM and first["model"] == f"{LLM}+v1"
    assert first["scoring"] == "llm" and first["collab_sequential"] is None
    assert first["summary_version"] == 1 and first["trigger"]["kind"] == "summary"
    assert first["latency_ms"] is not None and first["latency_ms"] > 0
    assert first["rerank"]["candidates"] == 12 and len(first["items"]) == 5
    ids = [i["item_id"] for i in first["items"]]
    # the candidate stage's own top 5 of the same 12 rides along: the list users would have had without the LLM
    assert len(first["rerank"]["candidate_top"]) == 5 and not set(first["rerank"]["candidate_top"]) & set(history)
    scores = [i["score"] for i in first["items"]]
    assert not set(ids) & set(history)
    assert scores == sorted(scores, reverse=True) and [i["rank"] for i in first["items"]] == [1, 2, 3, 4, 5]

    # the scores are the recommender's: recomputed outside the worker with the same adapter and summary
    summary = worker.get("/users/u0")["summary"]
    by_id = {i["item_id"]: i for i in items}
    candidates = [Candidate(i, by_id[i]["title"], by_id[i]["categories"]) for i in ids]
    expected = load_adapter(registry.load(LLM, device="cpu"), adapter).score(
        [ScoreRequest(prompts.user_preferences(summary), candidates)])[0]
    assert max(abs(a - b) for a, b in zip(scores, expected)) < 1e-4, (scores, expected)
    base = Recommender(registry.load(LLM, device="cpu")).score([ScoreRequest(prompts.user_preferences(summary),
                                                                             candidates)])[0]
    assert max(abs(a - b) for a, b in zip(scores, base)) > 1e-4  # the adapter, not the base model, scored them

    # retrained in place, now with collaborative tokens and a fused score: picked up without a restart
    make_collab_adapter(adapter, "v2", 2, sasrec, fusion_of(llm_margin=1.0, sequential=0.7, sequential_mean=0.3,
                                                            sequential_scale=2.0))
    wait_until(lambda: worker.metric("adapter_swaps_total") >= 2, timeout=60, message="adapter v2 swapped in")
    with InteractionProducer(env.bootstrap_servers, env.topic_interactions) as producer:
        for item in ("i1", "i7", "i13"):
            producer.interaction("u0", item, "click", helpers.now())
    second = wait_until(lambda: next(iter(r for r in recommendations(env, "u0") if r["summary_version"] == 2), None),
                        timeout=300, interval=1, message="list after the swap")
    assert second["adapter_version"] == "v2" and second["model"] == f"{LLM}+v2"
    assert second["scoring"] == "fused" and second["collab_sequential"] == sasrec.version
    assert not {i["item_id"] for i in second["items"]} & set(history + ["i1", "i7", "i13"])
    # the fused scores, recomputed outside the worker: p(Yes) with the user's SASRec state and each
    # candidate's item embedding as soft tokens, fused with the paired SASRec's scores
    summary = worker.get("/users/u0")["summary"]
    ids = [i["item_id"] for i in second["items"]]
    recent = tuple(history + ["i1", "i7", "i13"])
    request = ScoreRequest(prompts.user_preferences(summary), [Candidate(i, by_id[i]["title"], by_id[i]["categories"])
                                                               for i in ids], recent)
    served = load_adapter(registry.load(LLM, device="cpu"), adapter, sequential=sasrec)
    expected = served.fusion.rerank(served, request, served.score([request])[0], [{} for _ in ids])
    got = [i["score"] for i in second["items"]]
    assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-4, (got, expected)
    assert worker.metric("rerank_failures_total") == 0
