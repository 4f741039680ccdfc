"""Items and interactions in, recommendation lists out, on the real broker."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from streams.kafka.client import InteractionProducer, ItemProducer, RecommendationConsumer, latest_by_user
from tests.conftest import wait_until
from tests.integration import helpers

pytestmark = pytest.mark.integration


def latest_lists(env) -> dict[str, dict]:
    return latest_by_user(env.bootstrap_servers, env.topic_recommendations)


def final_lists(env, events: list[dict]) -> dict[str, dict]:
    """Each user's latest list, once it was built after all of that user's interactions."""
    counts: dict[str, int] = {}
    for e in events:
        counts[e["user_id"]] = counts.get(e["user_id"], 0) + 1

    def complete():
        lists = latest_lists(env)
        done = {u: r for u, r in lists.items() if r.get("interaction_count") == counts.get(u)}
        return done if len(done) == len(counts) else None

    return wait_until(complete, message="a list after all interactions, for every user")


def assert_valid_lists(lists: dict, history: dict[str, set], catalog_ids: set, k: int):
    assert set(lists) == set(history), f"users without a list: {set(history) - set(lists)}"
    for user, rec in lists.items():
        ids = [i["item_id"] for i in rec["items"]]
        assert len(ids) == k == len(set(ids)), rec
        assert set(ids) <= catalog_ids, f"{user}: not in catalog {set(ids) - catalog_ids}"
        assert not set(ids) & history[user], f"{user}: recommended already-seen {set(ids) & history[user]}"
        assert [i["rank"] for i in rec["items"]] == list(range(1, k + 1))
        scores = [i["score"] for i in rec["items"]]
        assert scores == sorted(scores, reverse=True)


def catalog_in_valid_lists_out(env, worker, users: int, per_user: int, k: int) -> tuple[dict, list[dict]]:
    """36 items, then ``users`` x ``per_user`` interactions: every user's final list, checked valid."""
    items = helpers.catalog(36)
    with ItemProducer(env.bootstrap_servers, env.topic_items) as producer:
        for item in items:
            producer.send(item)
    wait_until(lambda: worker.metric("catalog_items") == 36, message="catalog embedded")
    events = helpers.interactions(users=users, per_user=per_user)
    with InteractionProducer(env.bootstrap_servers, env.topic_interactions) as producer:
        for e in events:
            producer.interaction(e["user_id"], e["item_id"], e["type"], e["event_time"])
    history: dict[str, set] = {}
    for e in events:
        history.setdefault(e["user_id"], set()).add(e["item_id"])
    lists = final_lists(env, events)
    assert_valid_lists(lists, history, {i["item_id"] for i in items}, k=k)
    return lists, events


def test_every_user_gets_k_unseen_catalog_items(topic_factory, worker_factory):
    env = topic_factory(top_k=10)
    worker = worker_factory(env).start()
    lists, events = catalog_in_valid_lists_out(env, worker, users=6, per_user=5, k=10)
    users = {e["user_id"] for e in events}
    assert all(rec["strategy"] == "blend" and rec["latency_ms"] >= 0 for rec in lists.values())
    assert all(item["sources"] for rec in lists.values() for item in rec["items"])  # who proposed each item

    # the typed consumer reads the same lists
    consumer = RecommendationConsumer(env.bootstrap_servers, env.topic_recommendations)
    got = wait_until(lambda: consumer.poll(1.0), message="typed consumer")
    consumer.close()
    assert got.user_id in users and len(got.items) == 10

    # interactive queries and health
    state = worker.get("/users/u0")
    assert state["interaction_count"] == 5 and state["last_recommendation"]["user_id"] == "u0"
    assert [h["item_id"] for h in state["history"]] == [e["item_id"] for e in events if e["user_id"] == "u0"]
    assert worker.get("/users/nobody") is None
    assert worker.get("/health")["status"] == "ok"
    assert worker.metric("events_applied_total") == len(events)
    assert worker.metric("recommendations_emitted_total") >= len(users)
    assert "mmsr_consumer_lag{" in worker.get("/metrics")
    assert worker.metric("event_to_recommendation_seconds_count") >= len(users)
    # the flow report, which reads Faust's and aiokafka's private state: tests/integration/test_faust_compat.py


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat (Debian package) not installed")
def test_plain_json_wire_format_with_kcat(topic_factory, worker_factory):
    """kcat produces items and interactions and reads the lists: plain JSON, any client."""
    env = topic_factory(top_k=5)
    worker = worker_factory(env).start()
    bootstrap = env.bootstrap_servers
    items = helpers.catalog(24)
    kcat_produce(bootstrap, env.topic_items, [(i["item_id"], i) for i in items])
    wait_until(lambda: worker.metric("catalog_items") == 24, message="catalog embedded")
    events = helpers.interactions(users=3, per_user=3, n_items=24)
    kcat_produce(bootstrap, env.topic_interactions, [(e["user_id"], e) for e in events])
    history: dict[str, set] = {}
    for e in events:
        history.setdefault(e["user_id"], set()).add(e["item_id"])

    def consumed():
        out = subprocess.run(["kcat", "-b", bootstrap, "-C", "-t", env.topic_recommendations, "-o", "beginning",
                              "-e", "-q", "-f", "%k\t%s\n"], capture_output=True, text=True, timeout=30)
        lists = {}
        for line in out.stdout.splitlines():
            key, value = line.split("\t", 1)
            event = json.loads(value)
            assert key == event["user_id"]
            lists[key] = event
        done = {u: r for u, r in lists.items() if r.get("interaction_count") == counts[u]}
        return done if len(done) == len(history) else None

    counts = {u: sum(e["user_id"] == u for e in events) for u in history}
    lists = wait_until(consumed, message="kcat reads a list per user, built after all their interactions")
    assert_valid_lists(lists, history, {i["item_id"] for i in items}, k=5)


def kcat_produce(bootstrap: str, topic: str, keyed: list[tuple[str, dict]]) -> None:
    payload = "".join(f"{key}\t{json.dumps(value)}\n" for key, value in keyed)
    subprocess.run(["kcat", "-b", bootstrap, "-P", "-t", topic, "-K", "\t", "-X", "topic.partitioner=murmur2_random"],
                   input=payload, text=True, check=True, timeout=30)
