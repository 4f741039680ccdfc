"""Topic creation: idempotent, with the partition layout DESIGN.md asks for."""
from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streams.kafka.security import client_config
from streams.settings import Settings

INPUT_MAX_BYTES = 4 * 1024 * 1024  # accept oversized events so the worker can dead-letter them with a reason
DEAD_LETTER_MAX_BYTES = 16 * 1024 * 1024  # room for a base64 copy of the largest accepted input


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The user-keyed topics share one partition count so a worker holds all of a user's data."""
    users = settings.user_partitions
    big = {"max.message.bytes": str(INPUT_MAX_BYTES)}
    return [
        TopicSpec(settings.topic_items, settings.item_partitions, big),
        TopicSpec(settings.topic_caption_requests, settings.item_partitions, big),
        TopicSpec(settings.topic_item_pairs, settings.item_partitions, {}),
        TopicSpec(settings.topic_interactions, users, big),
        TopicSpec(settings.topic_user_summaries, users, {}),
        TopicSpec(settings.topic_recommendations, users, {}),
        TopicSpec(settings.topic_summary_requests, users, big),
        TopicSpec(settings.topic_rerank_requests, users, big),
        TopicSpec(settings.topic_captions, settings.item_partitions, {}),
        TopicSpec(settings.topic_dead_letters, 1, {"max.message.bytes": str(DEAD_LETTER_MAX_BYTES)}),
    ]


def create_topics(settings: Settings, timeout: float = 30.0) -> dict[str, str]:
    """Create what is missing; report 'created' or 'exists' per topic. A partition-count mismatch is an error."""
    admin = AdminClient({**client_config(settings), "log_level": 0})  # errors are raised, not logged
    specs = topic_specs(settings)
    existing = admin.list_topics(timeout=timeout).topics
    result: dict[str, str] = {}
    todo = []
    for spec in specs:
        if spec.name in existing:
            have = len(existing[spec.name].partitions)
            if have != spec.partitions:
                raise RuntimeError(f"topic {spec.name} has {have} partitions, expected {spec.partitions}; "
                                   "co-partitioning needs them equal")
            result[spec.name] = "exists"
        else:
            todo.append(NewTopic(spec.name, spec.partitions, settings.replication_factor, config=spec.config))
    if todo:
        for name, fut in admin.create_topics(todo, operation_timeout=timeout).items():
            try:
                fut.result()
                result[name] = "created"
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise
                result[name] = "exists"
    return result
