"""Captions and recurrent summaries inside the worker, on the real broker, with the real SmolLM2-135M."""
from __future__ import annotations

import pytest

from streams.kafka.client import InteractionProducer, ItemProducer
from tests.conftest import wait_until
from tests.integration import helpers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LLM = "smollm2-135m-instruct"


def summary_events(env) -> list[dict]:
    return helpers.topic_events(env, env.topic_user_summaries, "user_summary")


def state_when(worker, user: str, predicate, timeout=300):
    def check():
        state = worker.get(f"/users/{user}")
        return state if state and predicate(state) else None

    return wait_until(check, timeout=timeout, interval=0.5, message=f"state of {user}")


def produce(env, events):
    with InteractionProducer(env.bootstrap_servers, env.topic_interactions) as producer:
        for e in events:
            producer.interaction(e["user_id"], e["item_id"], "click", e["event_time"])


def test_nine_interactions_make_summary_version_three(topic_factory, worker_factory):
    env = topic_factory(summary_model=LLM, caption_model=LLM, summary_max_new_tokens=24,
                        caption_max_new_tokens=16)
    worker = worker_factory(env).start(timeout=600)
    items = helpers.catalog(12)
    with ItemProducer(env.bootstrap_servers, env.topic_items) as producer:
        for item in items:
            producer.send(item)
    wait_until(lambda: worker.metric("captions_total") >= 12, timeout=300, message="catalog captioned")
    wait_until(lambda: not worker.get("/items/i0")["caption_pending"], timeout=30, message="caption applied")
    profile = worker.get("/items/i0")
    assert profile["caption"] and profile["caption_source"] == "text"
    # a usable caption is embedded with the item's text; a degenerate one is kept out of it, and counted
    assert (profile["caption"] in profile["text"]) == (profile["caption_rejected"] is None)
    applied, rejected = worker.metric("captions_applied_total"), worker.metric("captions_rejected_total")
    assert applied + rejected == 12 and worker.metric("captions_total") == 12
    with ItemProducer(env.bootstrap_servers, env.topic_items) as producer:
        producer.send({**items[0], "event_time": helpers.now(5)})  # same content: not captioned again
        producer.send({**items[1], "title": "A changed title"})  # new content: captioned again
    wait_until(lambda: worker.metric("captions_total") >= 13, timeout=300, message="item updates")
    assert worker.metric("items_applied_total") == 14
    changed = worker.get("/items/i1")
    assert changed["title"] == "A changed title" and "A changed title" in changed["text"]

    u0 = [{"user_id": "u0", "item_id": f"i{j}", "event_time": helpers.now()} for j in range(9)]
    u1 = [{"user_id": "u1", "item_id": item, "event_time": helpers.now()} for item in ("i1", "i2", "nope", "i3")]
    produce(env, u0 + u1)
    state = state_when(worker, "u0", lambda s: s["summary_version"] == 3)
    assert state["interaction_count"] == 9 and state["pending_block"] == []
    assert state["summary"].startswith("The user appears to have a preference for")
    other = state_when(worker, "u1", lambda s: s["summary_version"] == 1)
    assert [e["item_id"] for e in other["pending_block"]] == ["i3"]
    assert worker.metric("summary_unknown_items_total") >= 1  # "nope" is summarized by its id, and counted

    events = summary_events(env)
    mine = [e for e in events if e["user_id"] == "u0"]
    assert [e["summary_version"] for e in mine] == [1, 2, 3]
    assert [e["interaction_count"] for e in mine] == [3, 6, 9]
    assert [[b["item_id"] for b in e["block"]] for e in mine] == [[f"i{j}" for j in range(k, k + 3)] for k in (0, 3, 6)]
    assert mine[-1]["summary"] == state["summary"]
    assert [e["summary_version"] for e in events if e["user_id"] == "u1"] == [1]


def test_kill9_between_and_inside_blocks_loses_and_repeats_nothing(topic_factory, worker_factory):
    env = topic_factory(summary_model=LLM, summary_max_new_tokens=12, session_timeout=8.0)
    users = [f"u{n}" for n in range(4)]
    items = {u: [f"i{(n * 5 + j) % 36}" for j in range(12)] for n, u in enumerate(users)}
    worker = worker_factory(env).start(timeout=600)

    def send(start, stop):
        produce(env, [{"user_id": u, "item_id": items[u][j], "event_time": helpers.now()}
                      for j in range(start, stop) for u in users])

    def all_counts(n):
        for u in users:
            state_when(worker, u, lambda s: s["interaction_count"] == n and s["summary_version"] == n // 3)

    send(0, 4)  # one block and one pending interaction each: the crash falls inside a block
    all_counts(4)
    worker.kill9()
    worker.start(timeout=600)
    send(4, 6)  # two blocks each: the crash falls between blocks
    all_counts(6)
    worker.kill9()
    worker.start(timeout=600)
    send(6, 12)  # and a crash while the summarizer is working on these
    wait_until(lambda: worker.metric("summaries_total") > 0, timeout=300, interval=0.05, message="summarizing")
    worker.kill9()
    worker.start(timeout=600)
    all_counts(12)

    for u in users:
        state = worker.get(f"/users/{u}")
        assert [h["item_id"] for h in state["history"]] == items[u]
        assert state["summary_version"] == 4 and state["pending_block"] == []
    events = summary_events(env)
    for u in users:
        mine = [e for e in events if e["user_id"] == u]
        assert {e["summary_version"] for e in mine} == {1, 2, 3, 4}
        assert all(e["interaction_count"] == 3 * e["summary_version"] for e in mine)
        for e in mine:  # each version summarizes exactly its own block, whichever run emitted it
            v = e["summary_version"]
            assert [b["item_id"] for b in e["block"]] == items[u][3 * (v - 1):3 * v]
