"""The state and llm roles as separate processes on the real broker, with SmolLM2-135M and a LoRA adapter."""
from __future__ import annotations

import pytest

from models import registry
from confluent_kafka import Producer

from streams.kafka.client import InteractionProducer, ItemProducer, read_all
from tests.adapters import make_adapter
from tests.conftest import wait_until
from tests.integration import helpers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LLM = registry.SMOLLM2


def lists(env, user: str) -> list[dict]:
    return [r for r in helpers.topic_events(env, env.topic_recommendations, "recommendation") if r["user_id"] == user]


def interact(env, user: str, items: list[str]) -> None:
    with InteractionProducer(env.bootstrap_servers, env.topic_interactions) as producer:
        for item in items:
            producer.interaction(user, item, "click", helpers.now())


def test_state_and_llm_roles_apart_the_llm_down_and_back(topic_factory, worker_factory, tmp_path):
    adapter = tmp_path / "adapter"
    make_adapter(adapter, "v1", seed=1)
    env = topic_factory(summary_model=LLM, summary_max_new_tokens=16, recommender_model=LLM,
                        recommender_adapter=str(adapter), rerank_candidates=12, top_k=5, session_timeout=10.0)
    state = worker_factory(env)
    state.env = {**state.env, "MMSR_ROLE": "state"}
    llm = worker_factory(env, peer=True)
    llm.env = {**llm.env, "MMSR_ROLE": "llm"}
    state.start(timeout=600)
    llm.start(timeout=600)
    assert llm.get("/users/u0") is None  # the llm role holds no user state (no such view: 404)
    with ItemProducer(env.bootstrap_servers, env.topic_items) as producer:
        for item in helpers.catalog(24):
            producer.send(item)
    wait_until(lambda: state.metric("catalog_items") >= 24, timeout=120, message="catalog indexed")

    # one block of B = 3: a summary request, its answer applied, then a candidate list and a re-ranked one
    interact(env, "u0", ["i0", "i6", "i12"])
    reranked = wait_until(lambda: next((r for r in lists(env, "u0") if r["strategy"] == "rerank"), None),
                          timeout=300, interval=1, message="a re-ranked list from the llm role")
    assert reranked["summary_version"] == 1 and reranked["adapter_version"] == "v1"
    assert reranked["trigger"]["kind"] == "summary" and len(reranked["items"]) == 5
    assert any(r["strategy"] == "blend" and r["model"] == "candidates:blend" for r in lists(env, "u0"))
    assert state.get("/users/u0")["summary_version"] == 1
    assert state.metric("summaries_total") == 1 and llm.metric("summaries_total") == 1

    # a redelivered summary request is answered again, and the answer cannot move the version back
    [request] = read_all(env.bootstrap_servers, env.topic_summary_requests, timeout=20, idle=1)
    summary = state.get("/users/u0")["summary"]
    resend = Producer({"bootstrap.servers": env.bootstrap_servers})
    resend.produce(env.topic_summary_requests, key=request.key(), value=request.value(), partition=request.partition())
    assert resend.flush(30) == 0
    wait_until(lambda: llm.metric("summaries_total") >= 2, timeout=120, message="the request answered twice")
    wait_until(lambda: state.metric("summaries_skipped_total") >= 1, timeout=60, message="the old answer skipped")
    assert state.get("/users/u0")["summary_version"] == 1 and state.get("/users/u0")["summary"] == summary

    # the llm role down: users still get candidate lists, marked as such
    llm.kill9()
    interact(env, "u1", ["i1", "i7", "i13"])
    blend = wait_until(lambda: next((r for r in lists(env, "u1") if r["strategy"] == "blend"), None), timeout=60,
                       interval=1, message="a candidate list without the llm role")
    assert blend["model"] == "candidates:blend" and len(blend["items"]) == 5
    assert state.get("/users/u1")["summary_version"] == 0  # its summary request waits on the topic

    # back up: the waiting request is answered and re-ranking resumes
    llm.start(timeout=600)
    again = wait_until(lambda: next((r for r in lists(env, "u1") if r["strategy"] == "rerank"), None), timeout=300,
                       interval=1, message="re-ranking resumed after the restart")
    assert again["summary_version"] == 1 and state.get("/users/u1")["summary_version"] == 1
