"""Readers of the project's topics (the recommendations tail, read_all) read every partition and
join no consumer group: two tails at once each see every list, and nothing waits for a rebalance."""
from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient

from streams.harness.process import wait_until
from streams.kafka.client import READER_GROUP_PREFIX, EventProducer, RecommendationConsumer, TopicMissing, read_all


def a_list(user: str) -> dict:
    return {"user_id": user, "items": [{"item_id": "i1", "score": 1.0, "rank": 1}], "summary_version": 0,
            "model": "test", "generated_at": "2026-12-03T00:00:00Z", "trigger": {"kind": "test"}, "latency_ms": 1.0}


def groups(bootstrap: str) -> set[str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})  # held until the answer: a dropped client cancels it
    listed = admin.list_consumer_groups().result(timeout=30)
    assert not listed.errors, listed.errors
    return {g.group_id for g in listed.valid}


def test_two_tails_each_read_every_partition_and_leave_no_group(topic_factory):
    env = topic_factory()
    users = [f"u{n}" for n in range(40)]
    producer = EventProducer(env.bootstrap_servers, env.topic_recommendations, "recommendation", "user_id")
    for user in users:
        producer.send(a_list(user))
    producer.flush()
    partitions = {m.partition() for m in read_all(env.bootstrap_servers, env.topic_recommendations)}
    assert len(partitions) > 1, "the lists should span several partitions"

    tails = [RecommendationConsumer(env.bootstrap_servers, env.topic_recommendations) for _ in range(2)]
    try:
        for tail in tails:
            seen: set[str] = set()

            def every_user_seen() -> bool:
                rec = tail.poll(0.5)
                if rec is not None:
                    seen.add(rec.user_id)
                return seen == set(users)

            wait_until(every_user_seen, timeout=60, interval=0, message="a tail reads every user's list")
        # a member of a named group still subscribes (and the group exists)
        member = RecommendationConsumer(env.bootstrap_servers, env.topic_recommendations, group_id=f"{env.app_id}-reader")
        try:
            wait_until(lambda: member.poll(0.5), timeout=60, message="the group member reads")
        finally:
            member.close()
    finally:
        for tail in tails:
            tail.close()
    existing = groups(env.bootstrap_servers)
    assert f"{env.app_id}-reader" in existing
    assert not [g for g in existing if g.startswith((READER_GROUP_PREFIX, "mmsr-read-", "mmsr-recs-tail"))], existing


def test_a_tail_of_a_topic_that_does_not_exist_is_a_clear_error(kafka_broker):
    with pytest.raises(TopicMissing, match="no partitions"):
        RecommendationConsumer(kafka_broker.bootstrap, "no-such-topic-for-a-tail")
